//! `ftexp report`: runs compared side by side, seed groups, formats and the val-loss plot.
use std::path::PathBuf;

use ftexp::report::{collect, render, report, Format, RunRow};
use serde_json::Value;

use crate::common::{fixtures, ftexp, stderr, tree};

/// A project that trains the llama fixture with LoRA for 4 steps, evaluating every 2.
fn project() -> tempfile::TempDir {
    let rows: Vec<Value> = (0..40)
        .map(|i| serde_json::json!({"instruction": format!("Double {}.", i % 8), "input": "", "output": format!("{} cups", 2 * (i % 8))}))
        .collect();
    let config = format!(
        "name = \"demo\"\nseed = 5\n[model]\ncheckpoint = \"{}\"\ndevice = \"cpu\"\n[data]\npath = \"rows.json\"\nprompt_style = \"Q: {{instruction}}\\nA: \"\nmax_seq_length = 64\nsplit = {{ train = 0.8, val = 0.1, test = 0.1 }}\n[method]\nkind = \"lora\"\n[train]\nlearning_rate = 1e-2\nmax_steps = 4\nbatch_size = 4\nmicro_batch_size = 2\nwarmup_iters = 1\neval_interval = 2\neval_iters = 2\nsave_interval = 100\nlog_interval = 1\n",
        fixtures().join("models/llama").display()
    );
    tree(&[("exp.toml", &config), ("rows.json", &serde_json::to_string(&rows).unwrap())])
}

fn run(p: &std::path::Path, seed: &str, lr: &str) {
    let set = format!("train.learning_rate={lr}");
    let out = ftexp(p, &["run", "exp.toml", "--seed", seed, "--set", &set], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
}

fn column(header: &[&str], name: &str) -> usize {
    header.iter().position(|h| *h == name).unwrap_or_else(|| panic!("no column {name} in {header:?}"))
}

#[test]
fn report_compares_runs_groups_seeds_and_plots() {
    let p = project();
    run(p.path(), "1", "1e-2");
    run(p.path(), "2", "1e-2");
    run(p.path(), "1", "3e-3");
    let exp = p.path().join("experiments/demo");
    let png = p.path().join("report.png");

    let text = report(std::slice::from_ref(&exp), Format::Text, Some(&png)).unwrap();
    println!("{text}");
    let lines: Vec<&str> = text.lines().collect();
    let header: Vec<&str> = lines[0].split_whitespace().collect();
    for name in ["run", "status", "seed", "tag", "train.learning_rate", "best_val_loss", "final_val_loss", "test_loss"]
    {
        column(&header, name);
    }
    assert!(!header.contains(&"train.batch_size") && !header.contains(&"name"), "{header:?}");
    assert!(header.iter().filter(|h| **h == "seed").count() == 1);
    // sorted by final val loss, ascending
    let fv = column(&header, "final_val_loss");
    let losses: Vec<f64> = lines[1..4].iter().map(|l| l.split_whitespace().nth(fv).unwrap().parse().unwrap()).collect();
    assert!(losses.windows(2).all(|w| w[0] <= w[1]), "{losses:?}");
    assert!(lines[1..4].iter().all(|l| l.contains("completed")));
    // the two runs at lr 0.01 form one group
    let group = lines.iter().find(|l| l.contains("train.learning_rate=0.01:")).expect("a group line");
    assert!(group.contains("2 runs") && group.contains("demo/v1") && group.contains("demo/v2") && group.contains('±'));
    assert!(!text.contains("train.learning_rate=0.003:"), "a single run is no group");

    let json: Value = serde_json::from_str(&report(std::slice::from_ref(&exp), Format::Json, None).unwrap()).unwrap();
    let runs = json["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    assert_eq!(json["differing_keys"], serde_json::json!(["train.learning_rate"]));
    let finals: Vec<f64> = runs.iter().map(|r| r["final_val_loss"].as_f64().unwrap()).collect();
    assert!(finals.windows(2).all(|w| w[0] <= w[1]), "{finals:?}");
    for r in runs {
        assert!(r["best_val_loss"].as_f64().unwrap() <= r["final_val_loss"].as_f64().unwrap() + 1e-5);
        assert!(r["tokens_per_s"].as_f64().unwrap() > 0.0 && r["seconds"].as_f64().is_some());
        assert!(r["exact_match"].is_null() && r["tag"].is_null());
    }
    let groups = json["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0]["count"], 2);
    assert_eq!(groups[0]["point"]["train.learning_rate"], 0.01);
    let (a, b) = (
        runs.iter().find(|r| r["run"] == "demo/v1").unwrap()["final_val_loss"].as_f64().unwrap(),
        runs.iter().find(|r| r["run"] == "demo/v2").unwrap()["final_val_loss"].as_f64().unwrap(),
    );
    let std = groups[0]["final_val_loss"]["std"].as_f64().unwrap();
    assert!((groups[0]["final_val_loss"]["mean"].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-9);
    assert!((std - (a - b).abs() / 2f64.sqrt()).abs() < 1e-9, "sample std of two values");

    let csv = report(std::slice::from_ref(&exp), Format::Csv, None).unwrap();
    let csv_lines: Vec<&str> = csv.lines().collect();
    assert_eq!(csv_lines.len(), 4, "{csv}");
    assert!(csv_lines[0].starts_with("run,status,seed,tag,train.learning_rate,best_val_loss,"), "{csv}");

    let bytes = std::fs::read(&png).unwrap();
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
    let leftovers: Vec<_> = std::fs::read_dir(p.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("tmp"))
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // A run given on its own, once even when its experiment is given too; one without results comes last.
    let v3 = exp.join("v3");
    assert_eq!(collect(&[exp.clone(), v3.clone()]).unwrap().len(), 3);
    // what `ftexp eval` and `ftexp sweep` add to run.json: a rate or a whole exact-match record, a tag
    let v2 = exp.join("v2");
    for (dir, em) in [(&v3, serde_json::json!(0.25)), (&v2, serde_json::json!({"correct": 1, "rate": 0.5}))] {
        let mut info: Value = serde_json::from_str(&std::fs::read_to_string(dir.join("run.json")).unwrap()).unwrap();
        info["evaluations"] = serde_json::json!({"test": {"loss": 1.0, "exact_match": em}});
        info["tag"] = "learning_rate=3e-3,lora_r=8".into();
        std::fs::write(dir.join("run.json"), info.to_string()).unwrap();
    }
    let rows = collect(&[v3.clone(), v2]).unwrap();
    assert_eq!(rows[0].label, "demo/v3");
    assert_eq!(rows[0].seed, Some(1));
    assert_eq!((rows[0].exact_match, rows[1].exact_match), (Some(0.25), Some(0.5)));
    assert_eq!(rows[0].tag.as_deref(), Some("learning_rate=3e-3,lora_r=8"));
    let csv = render(&rows, Format::Csv);
    assert!(csv.contains("\"learning_rate=3e-3,lora_r=8\""), "a tag with a comma is quoted: {csv}");
    assert_eq!(rows[0].val_curve.iter().map(|p| p.0).collect::<Vec<_>>(), [2, 4]);
    let empty = p.path().join("experiments/other/v1");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::copy(v3.join("config.toml"), empty.join("config.toml")).unwrap();
    let rows = collect(&[empty.clone(), exp.clone()]).unwrap();
    let text = render(&rows, Format::Text);
    let last = text.lines().nth(4).unwrap();
    assert!(last.starts_with("other/v1") && last.contains("missing"), "{text}");
    let json: Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
    assert_eq!(json["runs"][3]["run"], "other/v1");
    assert!(json["runs"][3]["final_val_loss"].is_null() && json["runs"][3]["best_val_loss"].is_null());
}

#[test]
fn a_path_that_is_no_run_is_named() {
    let dir = tree(&[("notes/readme.txt", "hi")]);
    let bogus = dir.path().join("notes");
    let gone = dir.path().join("experiments/nope");
    let err = report(&[bogus.clone(), gone.clone()], Format::Text, None).unwrap_err();
    assert_eq!(err.0.len(), 2, "{err}");
    assert!(err.0[0].contains(&bogus.display().to_string()) && err.0[0].contains("run directory"), "{err}");
    assert!(err.0[1].contains(&gone.display().to_string()), "{err}");
}

fn row(label: &str, seed: u64, lr: f64, final_val: Option<f64>, test: Option<f64>) -> RunRow {
    RunRow {
        label: label.into(),
        dir: PathBuf::from(label),
        status: if final_val.is_some() { "completed" } else { "failed" }.into(),
        seed: Some(seed),
        tag: Some(format!("learning_rate={lr}")),
        config: vec![
            ("name".into(), toml::Value::String("x".into())),
            ("seed".into(), toml::Value::Integer(seed as i64)),
            ("train.learning_rate".into(), toml::Value::Float(lr)),
            ("train.batch_size".into(), toml::Value::Integer(4)),
        ],
        best_val_loss: final_val,
        best_step: None,
        final_val_loss: final_val,
        test_loss: test,
        exact_match: None,
        tokens_per_s: None,
        seconds: None,
        val_curve: Vec::new(),
    }
}

#[test]
fn groups_give_mean_and_sample_std() {
    let rows = vec![
        row("x/v1", 1, 0.01, Some(3.0), Some(2.0)),
        row("x/v2", 2, 0.01, Some(1.0), Some(4.0)),
        row("x/v3", 3, 0.01, None, None),
        row("x/v4", 1, 0.003, Some(0.5), Some(0.5)),
    ];
    let json: Value = serde_json::from_str(&render(&rows, Format::Json)).unwrap();
    let order: Vec<&str> = json["runs"].as_array().unwrap().iter().map(|r| r["run"].as_str().unwrap()).collect();
    assert_eq!(order, ["x/v4", "x/v2", "x/v1", "x/v3"], "by val loss, runs without one last");
    let g = &json["groups"][0];
    assert_eq!(g["count"], 3);
    assert_eq!(g["final_val_loss"], serde_json::json!({"mean": 2.0, "std": 2f64.sqrt(), "n": 2}));
    assert_eq!(g["test_loss"]["mean"], 3.0);
    let text = render(&rows, Format::Text);
    assert!(
        text.contains("train.learning_rate=0.01: 3 runs (x/v2, x/v1, x/v3)  final_val_loss 2.0000 ± 1.4142"),
        "{text}"
    );
    let csv = render(&rows, Format::Csv);
    assert!(csv.contains("x/v1,completed,1,learning_rate=0.01,0.01,3,,3,2,,,\n"), "{csv}");
    assert!(csv.lines().nth(4).unwrap().starts_with("x/v3,failed,3,"), "{csv}");
}
