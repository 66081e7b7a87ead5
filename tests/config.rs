//! Layered configs: precedence, extends chains, and every kind of error, named where it came from.
use ftexp::config::{resolve_with_env, Resolved};
use ftexp::error::Problems;

use crate::common::{ftexp, stderr, tree, REQUIRED};

fn resolve(dir: &std::path::Path, file: &str, sets: &[&str], env: &[(&str, &str)]) -> Result<Resolved, Problems> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
    resolve_with_env(&dir.join(file), &sets, env)
}

fn errors(dir: &std::path::Path, file: &str, sets: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    resolve(dir, file, sets, env).expect_err("expected config errors").0
}

#[test]
fn precedence_default_extends_file_env_set() {
    let dir = tree(&[
        (
            "base/common.toml",
            "seed = 7\n[train]\nlearning_rate = 1e-3\nepochs = 2\nbatch_size = 8\nmicro_batch_size = 2\neval_interval = 5\n",
        ),
        ("exp.toml", &format!("extends = [\"base/common.toml\"]\n{REQUIRED}[train]\nepochs = 3\nbatch_size = 16\neval_interval = 6\n")),
    ]);
    let env = [("FTEXP_TRAIN__BATCH_SIZE", "32"), ("FTEXP_TRAIN__EVAL_INTERVAL", "7"), ("OTHER", "x")];
    let r = resolve(dir.path(), "exp.toml", &["train.eval_interval=9"], &env).unwrap();
    let c = &r.config;
    // default only
    assert_eq!(c.train.save_interval, 1000);
    assert_eq!(r.source("train.save_interval"), "default");
    // extends only (and tables deep-merge: the file's [train] did not wipe these)
    assert_eq!(c.seed, 7);
    assert_eq!(c.train.learning_rate, 1e-3);
    assert!(r.source("train.learning_rate").ends_with("base/common.toml:3"), "{}", r.source("train.learning_rate"));
    // file over extends
    assert_eq!(c.train.epochs, 3);
    assert!(r.source("train.epochs").ends_with("exp.toml:7"), "{}", r.source("train.epochs"));
    // env over file
    assert_eq!(c.train.batch_size, 32);
    assert_eq!(r.source("train.batch_size"), "env FTEXP_TRAIN__BATCH_SIZE");
    // --set over env
    assert_eq!(c.train.eval_interval, 9);
    assert_eq!(r.source("train.eval_interval"), "--set train.eval_interval=9");
    // name defaults to the file's name; extends kept for display
    assert_eq!(c.name, "exp");
    assert_eq!(c.extends, vec!["base/common.toml".to_string()]);
    assert_eq!(r.files.len(), 2);
}

#[test]
fn extends_paths_are_relative_to_the_naming_file_and_later_bases_win() {
    let dir = tree(&[
        ("configs/a/one.toml", "extends = [\"../b/two.toml\"]\n[train]\nepochs = 4\nlearning_rate = 0.5\n"),
        ("configs/b/two.toml", "[train]\nepochs = 5\nwarmup_iters = 3\n"),
        ("configs/c/three.toml", "[train]\nlearning_rate = 0.25\n"),
        ("configs/exp.toml", &format!("extends = [\"a/one.toml\", \"c/three.toml\"]\n{REQUIRED}")),
    ]);
    let r = resolve(dir.path(), "configs/exp.toml", &[], &[]).unwrap();
    assert_eq!(r.config.train.epochs, 4, "one.toml extends two.toml, so one wins");
    assert_eq!(r.config.train.warmup_iters, 3);
    assert_eq!(r.config.train.learning_rate, 0.25, "the later base wins");
    let names: Vec<String> = r.files.iter().map(|f| f.file_name().unwrap().to_string_lossy().into_owned()).collect();
    assert_eq!(names, ["two.toml", "one.toml", "three.toml", "exp.toml"]);
}

#[test]
fn set_and_env_values_are_toml_literals_falling_back_to_strings() {
    let dir = tree(&[("exp.toml", REQUIRED)]);
    let r = resolve(
        dir.path(),
        "exp.toml",
        &["model.device=cuda:1", "train.learning_rate=2e-4", "data.mask_inputs=false", "name=\"quoted\""],
        &[("FTEXP_DATA__SPLIT__VAL", "0.15"), ("FTEXP_DATA__SPLIT__TEST", "0.05")],
    )
    .unwrap();
    assert_eq!(r.config.model.device.to_string(), "cuda:1");
    assert_eq!(r.config.train.learning_rate, 2e-4);
    assert!(!r.config.data.mask_inputs);
    assert_eq!(r.config.name, "quoted");
    assert_eq!((r.config.data.split.val, r.config.data.split.test), (0.15, 0.05));
}

#[test]
fn extends_cycle_is_an_error_naming_the_chain() {
    let dir = tree(&[
        ("a.toml", "extends = [\"b.toml\"]\n"),
        ("b.toml", "extends = [\"c.toml\"]\n"),
        ("c.toml", "extends = [\"a.toml\"]\n"),
    ]);
    let errs = errors(dir.path(), "a.toml", &[], &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("cycle"), "{}", errs[0]);
    for f in ["a.toml → ", "b.toml → ", "c.toml → ", "a.toml"] {
        assert!(errs[0].contains(f), "{} lacks {f}", errs[0]);
    }
}

#[test]
fn missing_extends_file_names_the_file_and_the_chain() {
    let dir = tree(&[("a.toml", "extends = [\"b.toml\"]\n"), ("b.toml", "extends = [\"base/nope.toml\"]\n")]);
    let errs = errors(dir.path(), "a.toml", &[], &[]);
    assert_eq!(errs.len(), 1, "{errs:?}");
    assert!(errs[0].contains("base/nope.toml") && errs[0].contains("does not exist"), "{}", errs[0]);
    assert!(errs[0].contains("a.toml → ") && errs[0].contains("b.toml → "), "{}", errs[0]);
    let missing = errors(dir.path(), "nothere.toml", &[], &[]);
    assert!(missing[0].contains("nothere.toml") && missing[0].contains("not found"), "{}", missing[0]);
}

#[test]
fn unknown_keys_get_did_you_mean_with_file_and_line() {
    let dir = tree(&[(
        "exp.toml",
        &format!("{REQUIRED}[train]\nlearning_rat = 1e-3\nepochs = 2\n[traing]\nx = 1\n[method]\nlora_rank = 4\n"),
    )]);
    let errs = errors(dir.path(), "exp.toml", &[], &[]);
    assert_eq!(errs.len(), 3, "all problems at once: {errs:?}");
    let file = dir.path().join("exp.toml").display().to_string();
    assert_eq!(errs[0], format!("{file}:6: unknown key `train.learning_rat`; did you mean `train.learning_rate`?"));
    assert_eq!(errs[1], format!("{file}:8: unknown key `traing`; did you mean `train`?"));
    assert_eq!(errs[2], format!("{file}:11: unknown key `method.lora_rank`; did you mean `method.lora_r`?"));
}

#[test]
fn unknown_env_and_set_keys_name_their_source() {
    let dir = tree(&[("exp.toml", REQUIRED)]);
    let errs = errors(dir.path(), "exp.toml", &["train.epoch=3"], &[("FTEXP_TRAIN__LEARNIG_RATE", "1")]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[0],
        "env FTEXP_TRAIN__LEARNIG_RATE: unknown key `train.learnig_rate`; did you mean `train.learning_rate`?"
    );
    assert_eq!(errs[1], "--set train.epoch=3: unknown key `train.epoch`; did you mean `train.epochs`?");
    let bad = errors(dir.path(), "exp.toml", &["novalue"], &[]);
    assert!(bad[0].starts_with("--set novalue: expected KEY=VALUE"), "{}", bad[0]);
}

#[test]
fn type_errors_name_key_expected_type_and_source() {
    let dir = tree(&[(
        "exp.toml",
        &format!("{REQUIRED}[train]\nlearning_rate = \"fast\"\nepochs = 1.5\n[data.split]\ntrain = true\n"),
    )]);
    let errs = errors(dir.path(), "exp.toml", &["method.lora_query=maybe"], &[]);
    assert_eq!(errs.len(), 4, "{errs:?}");
    let file = dir.path().join("exp.toml").display().to_string();
    assert_eq!(errs[0], format!("{file}:6: `train.learning_rate` is \"fast\", but must be a number"));
    assert_eq!(errs[1], format!("{file}:7: `train.epochs` is 1.5, but must be a whole number"));
    assert_eq!(errs[2], format!("{file}:9: `data.split.train` is true, but must be a number"));
    assert_eq!(errs[3], "--set method.lora_query=maybe: `method.lora_query` is \"maybe\", but must be true or false");
}

#[test]
fn choice_errors_list_the_options_and_suggest() {
    let dir = tree(&[("exp.toml", &format!("{REQUIRED}[method]\nkind = \"lora2\"\n[model]\nprecision = \"bf16\"\n"))]);
    // a [model] table twice is invalid TOML: check that error first, with its line
    let errs = errors(dir.path(), "exp.toml", &[], &[]);
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("exp.toml:7: invalid TOML"), "{}", errs[0]);
    let dir = tree(&[("exp.toml", REQUIRED)]);
    let errs =
        errors(dir.path(), "exp.toml", &["method.kind=lora2", "model.precision=bf16", "train.lr_schedule=linear"], &[]);
    assert_eq!(errs.len(), 3, "{errs:?}");
    assert_eq!(
        errs[0],
        "--set method.kind=lora2: `method.kind` is \"lora2\", but must be one of \"full\", \"lora\", \"adapter\", \"adapter_v2\"; did you mean \"lora\"?"
    );
    assert!(errs[1].contains("\"bf16-true\"") && errs[1].contains("model.precision"), "{}", errs[1]);
    assert!(errs[2].contains("\"cosine\", \"constant\""), "{}", errs[2]);
}

#[test]
fn semantic_errors_are_all_reported_with_their_sources() {
    let dir = tree(&[(
        "exp.toml",
        "name = \"../escape\"\n[model]\ndevice = \"gpu\"\n[data]\nprompt_style = \"fancy\"\nsplit = { train = 0.7, val = 0.2, test = 0.2 }\n[train]\nbatch_size = 10\nmicro_batch_size = 4\nepochs = 0\nlearning_rate = 0\nmin_lr = 0.1\n[method]\nlora_dropout = 1.0\n",
    )]);
    let errs = errors(dir.path(), "exp.toml", &["data.split.test=-0.1"], &[]);
    let joined = errs.join("\n");
    let file = dir.path().join("exp.toml").display().to_string();
    let expect = [
        format!("{file}:1: `name` is \"../escape\""),
        format!("{file}: `model.checkpoint` is not set"),
        format!("{file}:3: `model.device` is \"gpu\""),
        format!("{file}: `data.path` is not set"),
        format!("{file}:5: `data.prompt_style` is \"fancy\""),
        "--set data.split.test=-0.1: `data.split.test` is -0.1; a share must be between 0 and 1".to_string(),
        format!("{file}:6: `data.split.train` + val + test add up to 0.8"),
        format!("{file}:10: `train.epochs` is 0; it must be at least 1"),
        format!("{file}:8: `train.batch_size` is 10, not a multiple of micro_batch_size × devices = 4 × 1 = 4; make it 8 or 12"),
        format!("{file}:11: `train.learning_rate` is 0; it must be above 0"),
        format!("{file}:12: `train.min_lr` is 0.1"),
        format!("{file}:14: `method.lora_dropout` is 1"),
    ];
    for e in &expect {
        assert!(errs.iter().any(|l| l.starts_with(e.as_str())), "missing {e:?} in\n{joined}");
    }
    assert_eq!(errs.len(), expect.len(), "{joined}");
}

#[test]
fn the_binary_prints_one_line_per_problem_and_exits_2() {
    let dir = tree(&[("exp.toml", &format!("{REQUIRED}[train]\nlearning_rat = 1\nepochs = -1\n"))]);
    let out = ftexp(dir.path(), &["plan", "exp.toml"], &[("FTEXP_SEED", "abc")]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 3, "{err}");
    assert!(lines.iter().all(|l| l.starts_with("error: ")), "{err}");
    assert!(err.contains("exp.toml:6: unknown key `train.learning_rat`; did you mean `train.learning_rate`?"), "{err}");
    assert!(err.contains("exp.toml:7: `train.epochs` is -1, but must be a whole number"), "{err}");
    assert!(err.contains("env FTEXP_SEED: `seed` is \"abc\", but must be a whole number"), "{err}");
    assert!(!err.contains("panicked"));
}

#[test]
fn docs_config_reference_is_the_schema() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
    let doc = std::fs::read_to_string(path).unwrap();
    let start =
        doc.find("<!-- keys:start -->\n").expect("docs/config.md has the keys table") + "<!-- keys:start -->\n".len();
    let end = doc.find("<!-- keys:end -->").unwrap();
    assert_eq!(&doc[start..end], ftexp::config::keys_reference(true), "regenerate with `ftexp keys --markdown`");
}

/// `train.micro_batch_size = 0` is refused where it was set, naming the key and the two ways to write
/// it (it used to mean "auto" silently); "auto" and a positive count are accepted.
#[test]
fn micro_batch_size_zero_is_refused_naming_the_key() {
    let dir = tree(&[("exp.toml", &format!("{REQUIRED}[train]\nbatch_size = 8\nmicro_batch_size = 0\n"))]);
    let file = dir.path().join("exp.toml").display().to_string();
    let errs = errors(dir.path(), "exp.toml", &[], &[]);
    assert_eq!(
        errs,
        [format!("{file}:7: `train.micro_batch_size` is 0; use a positive whole number, or \"auto\" to choose one")]
    );
    let errs = errors(dir.path(), "exp.toml", &["train.micro_batch_size=-2"], &[]);
    assert_eq!(errs.len(), 2, "{errs:?}");
    assert_eq!(
        errs[1],
        "--set train.micro_batch_size=-2: `train.micro_batch_size` is -2, but must be a positive whole number or \"auto\""
    );
    let env = [("FTEXP_TRAIN__MICRO_BATCH_SIZE", "0")];
    let errs = errors(dir.path(), "exp.toml", &["train.micro_batch_size=auto"], &env);
    assert!(errs.iter().any(|e| e.contains("`train.micro_batch_size` is 0; use a positive whole number")), "{errs:?}");
    let fine = tree(&[("exp.toml", &format!("{REQUIRED}[train]\nbatch_size = 8\n"))]);
    for (value, auto) in [("auto", true), ("4", false)] {
        let set = format!("train.micro_batch_size={value}");
        let r = resolve(fine.path(), "exp.toml", &[&set], &[]).unwrap();
        assert_eq!(r.config.train.auto_micro_batch(), auto);
    }
    let out = ftexp(dir.path(), &["plan", "exp.toml"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`train.micro_batch_size` is 0;"), "{}", stderr(&out));
}

/// A sweep's tags keep every grid value whole, decimals and exponents included (a tag once lost what
/// came before a value's last `.`); keys are shortened to their last part unless two axes share it.
#[test]
fn sweep_tags_keep_whole_decimal_values() {
    let dir = tree(&[("exp.toml", REQUIRED)]);
    let grid = "train.learning_rate=0.0003,3e-4,1.5e-3 train.weight_decay=0.05 method.lora_dropout=0.1";
    let out = ftexp(dir.path(), &["sweep", "exp.toml", "--grid", grid, "--print-points"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let tags: Vec<String> =
        crate::common::stdout(&out).lines().map(|l| l.rsplit_once("--tag ").unwrap().1.to_string()).collect();
    assert_eq!(
        tags,
        [
            "'learning_rate=0.0003,weight_decay=0.05,lora_dropout=0.1'",
            "'learning_rate=3e-4,weight_decay=0.05,lora_dropout=0.1'",
            "'learning_rate=1.5e-3,weight_decay=0.05,lora_dropout=0.1'",
        ]
    );
    let grid = "data.columns.input=x.y method.lora_r=8 data.format=alpaca export.format=hf";
    let out = ftexp(dir.path(), &["sweep", "exp.toml", "--grid", grid, "--print-points"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let first = crate::common::stdout(&out).lines().next().unwrap().to_string();
    assert!(first.ends_with("--tag 'input=x.y,lora_r=8,data.format=alpaca,export.format=hf'"), "{first}");
}
