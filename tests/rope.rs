//! Rotary scaling kinds (`ftexp::model::rope`) against transformers' own frequencies
//! (tests/fixtures/rope/reference.json, made by scripts/make_rope_reference.py), and the one-line
//! errors of bad rope settings.
use ftexp::model::rope::{parse, rope_dictionary, RopeScaling, RopeSpec};
use serde_json::{json, Value};

use crate::common::{fixtures, json_file};

/// The largest relative difference between `ours` and `reference` (fp32 values), and how many differ in
/// fp32 (serde_json may read a decimal one f64 unit off, never an fp32 unit).
fn compare(ours: &[f32], reference: &[f64]) -> (f64, usize) {
    assert_eq!(ours.len(), reference.len(), "number of frequencies");
    let diff = |(&a, &b): (&f32, &f64)| ((a as f64 - b) / b).abs();
    let max = ours.iter().zip(reference).map(diff).fold(0.0, f64::max);
    (max, ours.iter().zip(reference).filter(|(&a, &b)| a != b as f32).count())
}

/// The spec a config.json's values give, resolved as a model loader would.
fn spec_of(config: &Value) -> RopeSpec {
    let params = rope_dictionary(config);
    let number = |key: &str| params.get(key).or_else(|| config.get(key)).and_then(Value::as_f64);
    let int = |key: &str| config.get(key).and_then(Value::as_i64);
    let head_dim = int("head_dim").unwrap_or_else(|| int("hidden_size").unwrap() / int("num_attention_heads").unwrap());
    let dims = (head_dim as f64 * number("partial_rotary_factor").unwrap_or(1.0)) as i64;
    let theta = number("rope_theta").unwrap_or(10000.0);
    parse(&params, theta, dims, int("max_position_embeddings").unwrap()).unwrap_or_else(|e| panic!("{config}: {e}"))
}

fn floats(v: &Value) -> Vec<f64> {
    v.as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect()
}

#[test]
fn frequencies_match_transformers() {
    let reference = json_file(&fixtures().join("rope/reference.json"));
    let (mut worst, mut worst_init, mut worst_factor, mut unequal, mut total) = (0.0f64, 0.0f64, 0.0f64, 0, 0);
    for case in reference["cases"].as_array().unwrap() {
        let name = case["name"].as_str().unwrap();
        let seq_len = case["seq_len"].as_i64().unwrap();
        // The config.json as given, and as transformers saves it again: the same rotary settings.
        for form in ["config", "saved"] {
            let spec = spec_of(&case[form]);
            let (inv_freq, attention_factor) = spec.inverse_frequencies(seq_len);
            assert_eq!(inv_freq.kind(), tch::Kind::Float, "{name}");
            let ours = Vec::<f32>::try_from(&inv_freq).unwrap();
            let (diff, n) = compare(&ours, &floats(&case["inv_freq"]));
            assert!(diff < 1e-6, "{name} ({form}): relative difference {diff:e}");
            let (diff_init, _) = compare(&ours, &floats(&case["init_inv_freq"]));
            assert!(diff_init < 1e-6, "{name} ({form}): relative difference {diff_init:e} to the init function");
            let factor_diff = (attention_factor - case["attention_factor"].as_f64().unwrap()).abs();
            assert!(factor_diff < 1e-9, "{name} ({form}): attention factor {attention_factor}");
            let kind = case["rope_type"].as_str().unwrap();
            assert_eq!(spec.depends_on_length(), kind == "dynamic" || kind == "longrope", "{name}");
            (worst, worst_init, worst_factor) =
                (worst.max(diff), worst_init.max(diff_init), worst_factor.max(factor_diff));
            (unequal, total) = (unequal + n, total + ours.len());
        }
    }
    eprintln!(
        "rope: {total} frequencies, {unequal} not bit-equal to transformers' forward; largest relative difference \
         {worst:e} (to the init functions {worst_init:e}); attention factors within {worst_factor:e}"
    );
}

/// src/model/gpt.rs's Llama 3 scaling (f64 per frequency), which the llama3 kind replaces.
fn llama3_as_gpt_rs(theta: f64, dims: i64, s: [f64; 4]) -> Vec<f32> {
    let [factor, low, high, old] = s;
    let exponents = tch::Tensor::arange_start_step(0, dims, 2, (tch::Kind::Int64, tch::Device::Cpu))
        .to_kind(tch::Kind::Float)
        / dims as f64;
    let inv = tch::Tensor::from(theta as f32).pow(&exponents).reciprocal();
    let (low_wavelen, high_wavelen) = (old / low, old / high);
    Vec::<f32>::try_from(&inv)
        .unwrap()
        .iter()
        .map(|&f| {
            let f = f as f64;
            let wavelen = 2.0 * std::f64::consts::PI / f;
            let g = if wavelen > low_wavelen { f / factor } else { f };
            if wavelen < high_wavelen || wavelen > low_wavelen {
                g as f32
            } else {
                let smooth = (old / wavelen - low) / (high - low);
                ((1.0 - smooth) * g / factor + smooth * g) as f32
            }
        })
        .collect()
}

#[test]
fn llama3_matches_the_existing_scaling() {
    let (mut worst, mut unequal) = (0.0f64, 0);
    for (theta, dims) in [(500000.0, 128), (500000.0, 64), (100000.0, 96), (10000.0, 32)] {
        for s in [[8.0, 1.0, 4.0, 8192.0], [32.0, 1.0, 4.0, 8192.0], [4.0, 2.0, 8.0, 2048.0], [16.0, 0.5, 3.0, 512.0]] {
            let params = json!({"rope_type": "llama3", "factor": s[0], "low_freq_factor": s[1],
                                "high_freq_factor": s[2], "original_max_position_embeddings": s[3]});
            let spec = parse(&params, theta, dims, 131072).unwrap();
            let ours = Vec::<f32>::try_from(&spec.inverse_frequencies(1).0).unwrap();
            let old = llama3_as_gpt_rs(theta, dims, s);
            let (diff, n) = compare(&ours, &old.iter().map(|&x| x as f64).collect::<Vec<_>>());
            assert!(diff < 1e-6, "theta {theta}, dims {dims}, {s:?}: relative difference {diff:e}");
            (worst, unequal) = (worst.max(diff), unequal + n);
        }
    }
    eprintln!("rope: llama3 against gpt.rs's scaling: {unequal} values not bit-equal, largest relative {worst:e}");
}

#[test]
fn kinds_and_defaults() {
    let spec = parse(&Value::Null, 10000.0, 64, 2048).unwrap();
    assert_eq!(spec.scaling, RopeScaling::Default);
    assert!(!spec.depends_on_length());
    let yarn = parse(&json!({"type": "yarn", "factor": 4}), 10000.0, 64, 8192).unwrap().scaling;
    let expected = RopeScaling::Yarn {
        factor: 4.0,
        original_max_position_embeddings: 8192.0,
        beta_fast: 32.0,
        beta_slow: 1.0,
        truncate: true,
        attention_factor: 0.1 * 4f64.ln() + 1.0,
    };
    assert_eq!(yarn, expected);
    // A null factor is the ratio of the lengths; zero betas and a null truncate as Python reads them.
    let params = json!({"rope_type": "yarn", "factor": null, "original_max_position_embeddings": 2048,
                        "beta_fast": 0, "beta_slow": null, "truncate": null});
    let RopeScaling::Yarn { factor, beta_fast, beta_slow, truncate, .. } =
        parse(&params, 10000.0, 64, 8192).unwrap().scaling
    else {
        panic!("yarn")
    };
    assert_eq!((factor, beta_fast, beta_slow, truncate), (4.0, 32.0, 1.0, false));
    let short: Vec<f64> = (0..32).map(|i| 1.0 + i as f64 / 10.0).collect();
    let su = json!({"type": "su", "short_factor": short, "long_factor": short});
    let spec = parse(&su, 10000.0, 64, 4096).unwrap();
    assert!(matches!(spec.scaling, RopeScaling::LongRope { attention_factor, .. } if attention_factor == 1.0));
    assert!(spec.depends_on_length());
    // rope_type wins over type.
    let spec = parse(&json!({"type": "su", "rope_type": "linear", "factor": 2}), 10000.0, 64, 4096).unwrap();
    assert_eq!(spec.scaling, RopeScaling::Linear { factor: 2.0 });
}

#[test]
fn no_rotary_dimensions_give_no_frequencies() {
    for params in [
        json!({}),
        json!({"type": "linear", "factor": 2}),
        json!({"type": "dynamic", "factor": 2}),
        json!({"type": "yarn", "factor": 2}),
        json!({"type": "longrope", "short_factor": [], "long_factor": []}),
        json!({"type": "llama3", "factor": 8, "low_freq_factor": 1, "high_freq_factor": 4}),
    ] {
        let spec = parse(&params, 10000.0, 0, 64).unwrap();
        for seq_len in [1, 64, 65] {
            assert_eq!(spec.inverse_frequencies(seq_len).0.size(), [0], "{params}");
        }
    }
}

#[test]
fn rope_dictionary_merges_as_transformers() {
    assert_eq!(rope_dictionary(&json!({"hidden_size": 64})), Value::Null);
    assert_eq!(rope_dictionary(&json!({"rope_theta": 5e5})), json!({"rope_theta": 5e5}));
    let classic = json!({"rope_theta": 5e5, "partial_rotary_factor": 0.5,
                         "rope_scaling": {"type": "linear", "factor": 2}, "original_max_position_embeddings": 1024});
    assert_eq!(
        rope_dictionary(&classic),
        json!({"type": "linear", "factor": 2, "rope_theta": 5e5, "partial_rotary_factor": 0.5})
    );
    // A set rope_scaling wins over rope_parameters; the dictionary's own theta over the top-level one.
    let both = json!({"rope_theta": 1.0, "rope_scaling": {"rope_type": "longrope", "rope_theta": 2.0,
                      "original_max_position_embeddings": 2048}, "rope_parameters": {"rope_type": "default"},
                      "original_max_position_embeddings": 4096});
    assert_eq!(
        rope_dictionary(&both),
        json!({"rope_type": "longrope", "rope_theta": 2.0, "original_max_position_embeddings": 4096})
    );
    let v5 = json!({"rope_scaling": null, "rope_parameters": {"rope_type": "default", "rope_theta": 7.0}});
    assert_eq!(rope_dictionary(&v5), json!({"rope_type": "default", "rope_theta": 7.0}));
}

#[test]
fn bad_values_give_one_line_errors() {
    let check = |params: Value, theta: f64, dims: i64, expected: &str| {
        let err = parse(&params, theta, dims, 4096).expect_err(&params.to_string());
        assert!(err.contains(expected), "{params}: {err}");
        assert!(!err.contains('\n'), "{params}: {err}");
    };
    let bad = |params: Value, expected: &str| check(params, 1e4, 32, expected);
    let sixteen: Vec<f64> = vec![1.0; 16];
    let supported = "supported: default, linear, dynamic, yarn, longrope (or su), llama3";
    bad(json!({"rope_type": "linear"}), "rope scaling `factor` is missing");
    bad(json!({"type": "dynamic", "factor": null}), "rope scaling `factor` is missing");
    bad(json!({"rope_type": "yarn"}), "rope scaling `factor` is missing");
    bad(json!({"rope_type": "proportional"}), &format!("rope type \"proportional\" is not supported; {supported}"));
    bad(json!({"rope_type": "mrope", "mrope_section": [8, 4, 4]}), &format!("\"mrope\" is not supported; {supported}"));
    bad(json!({"rope_type": 3}), "rope scaling `rope_type` must be a string, got 3");
    bad(json!({"type": "linear", "factor": -2.0}), "rope scaling `factor` must be a finite positive number, got -2");
    bad(json!({"type": "linear", "factor": 0}), "`factor` must be a finite positive number, got 0");
    bad(json!({"type": "linear", "factor": "2"}), "rope scaling `factor` must be a number, got \"2\"");
    check(json!({"type": "dynamic", "factor": 2}), 1e4, 2, "dynamic rope scaling needs more than 2 rotary dimensions");
    bad(json!({"type": "yarn", "factor": 2, "attention_factor": 0}), "`attention_factor` must be a finite positive");
    bad(json!({"type": "yarn", "factor": 2, "beta_fast": -1}), "`beta_fast` must be a finite positive number");
    bad(json!({"type": "yarn", "factor": 2, "truncate": "no"}), "`truncate` must be true or false");
    let negative = json!({"type": "yarn", "factor": 2, "original_max_position_embeddings": -5});
    bad(negative, "`original_max_position_embeddings` must be a finite positive number, got -5");
    bad(json!({"type": "yarn", "factor": 40, "mscale": -200, "mscale_all_dim": 1}), "give the attention factor");
    bad(json!({"type": "longrope", "long_factor": sixteen}), "rope scaling `short_factor` is missing");
    let three = json!({"type": "su", "short_factor": sixteen, "long_factor": [1, 2, 3]});
    bad(three, "rope scaling `long_factor` has 3 values; 32 rotary dimensions need 16");
    bad(
        json!({"type": "longrope", "short_factor": sixteen, "long_factor": 2}),
        "`long_factor` must be a list of numbers",
    );
    let zero = json!({"type": "longrope", "short_factor": [1, 0], "long_factor": [1, 1]});
    check(zero, 1e4, 4, "`short_factor` must hold finite positive numbers, got 0");
    let one = json!({"type": "longrope", "short_factor": sixteen, "long_factor": sixteen, "factor": 4,
                     "original_max_position_embeddings": 1});
    bad(one, "gives no attention factor");
    bad(json!({"type": "llama3", "factor": 8, "high_freq_factor": 4}), "rope scaling `low_freq_factor` is missing");
    let equal = json!({"type": "llama3", "factor": 8, "low_freq_factor": 4, "high_freq_factor": 4});
    bad(equal, "`high_freq_factor` (4) must exceed `low_freq_factor` (4)");
    bad(json!({"full_attention": {"rope_type": "default"}}), "nested by layer type (`full_attention`)");
    bad(json!([1, 2]), "rope parameters must be an object, got [1,2]");
    check(Value::Null, 0.0, 32, "rope_theta must be a finite positive number, got 0");
    check(Value::Null, f64::NAN, 32, "rope_theta must be a finite positive number, got NaN");
    check(Value::Null, 1e4, 63, "rotary dimensions must be even and not negative, got 63");
    assert!(parse(&Value::Null, 1e4, 32, 0).unwrap_err().contains("max_position_embeddings must be positive"));
}
