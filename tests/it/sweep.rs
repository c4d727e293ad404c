//! Sweeps: matrix stages expanded, fanned out and gathered through the real binary (with
//! `command` stages, so they are quick), member ids in every selection flag, `--set`, located
//! errors; and the Deflated Sharpe Ratio and the Probability of Backtest Overfitting against
//! hand-worked cases and `scripts/dsr_pbo.py` (an independent implementation; its output is
//! embedded below).

use crate::common::Project;
use asterflow::sweep::{deflated_sharpe, overfitting, sharpe, skew_kurtosis};

// ---- DSR and PBO ----

fn series(member: usize, periods: usize) -> Vec<f64> {
    (0..periods)
        .map(|t| {
            0.0005 * member as f64
                + 0.01 * (0.37 * t as f64 * (member + 1) as f64 + member as f64).sin()
        })
        .collect()
}

fn close(got: f64, want: f64, what: &str) {
    assert!((got - want).abs() < 1e-9, "{what}: {got} vs {want}");
}

#[test]
fn dsr_matches_the_reference_script() {
    // python3 scripts/dsr_pbo.py:
    //   dsr example: sr0 0.04008961099736194 dsr 0.8930105246199953
    let d = deflated_sharpe(0.08, 1000, -0.3, 5.0, &[0.05, 0.02, -0.01, 0.08, 0.03]);
    close(d.expected_max, 0.040_089_610_997_361_94, "SR0");
    close(d.dsr, 0.893_010_524_619_995_3, "DSR");
    //   series example: best 5 sharpe 0.3391578892666129 g3 0.04372381575269297
    //   g4 1.4963085238681748 sr0 0.13282275880595198 dsr 0.9493090261812149
    let matrix: Vec<Vec<f64>> = (0..6).map(|m| series(m, 64)).collect();
    let sharpes: Vec<f64> = matrix.iter().map(|r| sharpe(r)).collect();
    let best = (0..6)
        .max_by(|&a, &b| sharpes[a].total_cmp(&sharpes[b]))
        .unwrap();
    assert_eq!(best, 5);
    close(sharpes[best], 0.339_157_889_266_612_9, "best Sharpe");
    let (g3, g4) = skew_kurtosis(&matrix[best]);
    close(g3, 0.043_723_815_752_692_97, "skewness");
    close(g4, 1.496_308_523_868_174_8, "kurtosis");
    let d = deflated_sharpe(sharpes[best], 64, g3, g4, &sharpes);
    close(d.expected_max, 0.132_822_758_805_951_98, "SR0");
    close(d.dsr, 0.949_309_026_181_214_9, "DSR");
}

#[test]
fn dsr_worked_by_hand() {
    // Two members with Sharpes 0.1 and 0.3: V = 0.02, N = 2, so Z^-1(1/2) = 0 and
    // SR0 = sqrt(0.02) * gamma * Z^-1(1 - 1/(2e)) = 0.14142 * 0.57722 * 0.90045.
    let d = deflated_sharpe(0.3, 101, 0.0, 3.0, &[0.1, 0.3]);
    let z = asterflow::sweep::normal_quantile(1.0 - 1.0 / (2.0 * std::f64::consts::E));
    assert!((z - 0.900_452_596_637_790_3).abs() < 1e-12, "{z}");
    let sr0 = 0.02f64.sqrt() * 0.577_215_664_901_532_9 * z;
    close(d.expected_max, sr0, "SR0");
    // Normal returns: denominator sqrt(1 + 2/4 * 0.09) = sqrt(1.045); z = (0.3 - SR0) * 10 / that.
    let want = asterflow::sweep::normal_cdf((0.3 - sr0) * 10.0 / 1.045f64.sqrt());
    close(d.dsr, want, "DSR");
}

#[test]
fn pbo_matches_the_reference_script_and_hand_cases() {
    // python3 scripts/dsr_pbo.py:
    //   pbo example: blocks 4 splits 6 pbo 0.0
    //   pbo example: blocks 8 splits 70 pbo 0.21428571428571427
    let matrix: Vec<Vec<f64>> = (0..6).map(|m| series(m, 64)).collect();
    let four = overfitting(&matrix, 4).unwrap();
    assert_eq!((four.splits, four.pbo), (6, 0.0));
    let eight = overfitting(&matrix, 8).unwrap();
    assert_eq!(eight.splits, 70);
    close(eight.pbo, 0.214_285_714_285_714_27, "PBO");
    // By hand, two blocks: a member good in the first half and bad in the second and one the
    // other way round. Whichever half is in-sample, its winner is the other half's loser:
    // rank 1 of 2, w = 1/3, logit < 0 in both splits: PBO = 1.
    let a = [
        vec![0.02, 0.01, 0.03, 0.02],
        vec![-0.01, -0.02, -0.01, -0.03],
    ]
    .concat();
    let b = [
        vec![-0.01, -0.02, -0.01, -0.03],
        vec![0.02, 0.01, 0.03, 0.02],
    ]
    .concat();
    let flipped = overfitting(&[a.clone(), b], 2).unwrap();
    assert_eq!((flipped.splits, flipped.pbo), (2, 1.0));
    // A member better in both halves wins in-sample and ranks 2 of 2 out of sample: PBO = 0.
    let better: Vec<f64> = a
        .iter()
        .map(|r| r.abs() + 0.01 * (r * 100.0).sin().abs())
        .collect();
    let worse: Vec<f64> = a.iter().map(|r| -r.abs()).collect();
    assert_eq!(overfitting(&[worse, better], 2).unwrap().pbo, 0.0);
    // Too short, or one member: no PBO.
    assert!(overfitting(&matrix, 40).is_none());
    assert!(overfitting(&matrix[..1], 4).is_none());
}

// ---- expansion through the binary ----

const PIPELINE: &str = "name: m
stages:
  prep:
    kind: command
    with: {run: 'echo prep > out.txt', outputs: [out.txt]}
  labels:
    kind: command
    needs: [prep]
    matrix:
      horizon: [4, 12]
    with: {run: 'echo h${matrix.horizon} > out.txt', outputs: [out.txt]}
  train:
    kind: command
    needs: [labels]
    matrix:
      model: [logistic, mlp]
      hidden: [32, 64]
      exclude: [{model: logistic, hidden: 64}]
      include: [{model: softmax, hidden: 0}]
    with:
      run: 'cat \"$ASTERFLOW_INPUT_LABELS_HORIZON_${matrix.horizon}/out.txt\" > out.txt; echo ${matrix.model}-${matrix.hidden} >> out.txt'
      outputs: [out.txt]
  backtest:
    kind: command
    needs: [train, prep]
    with: {run: 'echo bt > out.txt', outputs: [out.txt]}
  compare:
    kind: compare
    needs: [backtest]
  report:
    kind: report
    needs: [train, compare]
";

fn ids(run: &crate::common::Run) -> Vec<String> {
    run.json()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["id"].as_str().unwrap().to_owned())
        .collect()
}

fn statuses(run: &crate::common::Run) -> Vec<(String, String)> {
    run.json()["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| {
            (
                stage["id"].as_str().unwrap().to_owned(),
                stage["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

#[test]
fn matrices_expand_fan_out_through_two_levels_and_gather_once() {
    let project = Project::new();
    project.write("pipelines/m.yaml", PIPELINE);
    let plan = project.run(&["run", "pipelines/m.yaml", "--validate-only", "--json"]);
    assert_eq!(plan.code, 0, "{}", plan.stderr);
    let ids = ids(&plan);
    let trains = [
        "model=logistic,hidden=32",
        "model=mlp,hidden=32",
        "model=mlp,hidden=64",
        "model=softmax,hidden=0",
    ];
    let mut want = vec![
        "prep".to_owned(),
        "labels@horizon=4".into(),
        "labels@horizon=12".into(),
    ];
    for stage in ["train", "backtest"] {
        for horizon in [4, 12] {
            for train in trains {
                want.push(format!("{stage}@horizon={horizon},{train}"));
            }
        }
    }
    want.push("compare".into());
    want.push("report".into());
    assert_eq!(ids, want);
    // The gathering stages wait for every member, once.
    let stages = plan.json()["stages"].as_array().unwrap().clone();
    let reason = stages[stages.len() - 2]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reason.matches("`backtest@").count(), 8, "{reason}");
    let reason = stages[stages.len() - 1]["reason"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(reason.matches("`train@").count(), 8, "{reason}");
    assert!(reason.contains("`compare`"), "{reason}");

    // Run the members (compare has nothing to compare: commands write no backtest).
    let run = project.run(&["run", "pipelines/m.yaml", "--json", "--stop-at", "backtest"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let out = std::fs::read_to_string(
        project
            .path()
            .join(
                run.json()["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|s| s["id"] == "train@horizon=12,model=mlp,hidden=64")
                    .unwrap()["output"]
                    .as_str()
                    .unwrap(),
            )
            .join("out.txt"),
    )
    .unwrap();
    assert_eq!(
        out, "h12\nmlp-64\n",
        "substitution and the right upstream member"
    );
    // prep ran once for every member.
    assert_eq!(
        statuses(&run)
            .iter()
            .filter(|(id, s)| id == "prep" && s == "ran")
            .count(),
        1
    );

    // Member ids select: a glob, a single member, a template.
    let only = project.run(&[
        "run",
        "pipelines/m.yaml",
        "--json",
        "--only",
        "train@*mlp*",
        "--force",
    ]);
    assert_eq!(only.code, 0, "{}", only.stderr);
    let ran: Vec<String> = statuses(&only)
        .into_iter()
        .filter(|(_, s)| s == "ran")
        .map(|(id, _)| id)
        .collect();
    assert_eq!(ran.len(), 4, "{ran:?}");
    assert!(
        ran.iter()
            .all(|id| id.starts_with("train@") && id.contains("model=mlp"))
    );
    let start = project.run(&[
        "run",
        "pipelines/m.yaml",
        "--json",
        "--start-from",
        "labels@horizon=12",
        "--stop-at",
        "backtest",
    ]);
    assert_eq!(start.code, 0, "{}", start.stderr);
    for (id, status) in statuses(&start) {
        let downstream = id.contains("horizon=12");
        if id == "labels@horizon=12" {
            assert_eq!(status, "ran");
        } else if !downstream && id != "compare" && id != "report" {
            assert_ne!(status, "ran", "{id} is not downstream of labels@horizon=12");
        }
    }
    let status = project.run(&["status", "pipelines/m.yaml"]);
    assert!(
        status
            .stdout
            .contains("backtest@horizon=12,model=softmax,hidden=0"),
        "{}",
        status.stdout
    );
    let unknown = project.run(&["run", "pipelines/m.yaml", "--only", "train@model=nope"]);
    assert_eq!(unknown.code, 2);
    assert!(
        unknown
            .stderr
            .contains("--only names stage `train@model=nope`"),
        "{}",
        unknown.stderr
    );
}

#[test]
fn a_changed_member_reruns_alone() {
    let project = Project::new();
    project.write("pipelines/m.yaml", PIPELINE);
    let first = project.run(&["run", "pipelines/m.yaml", "--json", "--stop-at", "backtest"]);
    assert_eq!(first.code, 0, "{}", first.stderr);
    // hidden 64 becomes 128: its members are new, every other member is cached.
    project.write(
        "pipelines/m.yaml",
        &PIPELINE.replace("hidden: [32, 64]", "hidden: [32, 128]"),
    );
    let second = project.run(&["run", "pipelines/m.yaml", "--json", "--stop-at", "backtest"]);
    assert_eq!(second.code, 0, "{}", second.stderr);
    for (id, status) in statuses(&second) {
        let changed = id.contains("hidden=128");
        assert_eq!(status == "ran", changed, "{id}: {status}");
    }
    // --set is a variant of one run: part of the fingerprint, so the stage runs, and runs again
    // only when the value changes.
    let set = [
        "run",
        "pipelines/m.yaml",
        "--json",
        "--only",
        "prep",
        "--set",
        "prep.with.run=echo other > out.txt",
    ];
    let third = project.run(&set);
    assert_eq!(third.code, 0, "{}", third.stderr);
    assert_eq!(statuses(&third)[0], ("prep".to_owned(), "ran".to_owned()));
    let fourth = project.run(&set);
    assert_eq!(
        statuses(&fourth)[0],
        ("prep".to_owned(), "cached".to_owned())
    );
    let varies = project.run(&["run", "pipelines/m.yaml", "--set", "labels.with.run=true"]);
    assert_eq!(varies.code, 2);
    assert!(
        varies.stderr.contains("`run` is set by the stage's matrix"),
        "{}",
        varies.stderr
    );
    let bad = project.run(&["run", "pipelines/m.yaml", "--set", "nothere.with.x=1"]);
    assert_eq!(bad.code, 2);
    assert!(
        bad.stderr
            .contains("`nothere` is not a stage of this pipeline"),
        "{}",
        bad.stderr
    );
}

fn assert_error(text: &str, located: &str, message: &str) {
    let project = Project::new();
    project.write("pipelines/m.yaml", text);
    let run = project.run(&["run", "pipelines/m.yaml", "--validate-only"]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert!(
        run.stderr.contains(located),
        "expected {located}:\n{}",
        run.stderr
    );
    assert!(
        run.stderr.contains(message),
        "expected {message}:\n{}",
        run.stderr
    );
    assert!(!project.path().join("runs").exists());
}

#[test]
fn matrix_mistakes_are_located_errors() {
    let stage = |matrix: &str, with: &str| {
        format!(
            "name: m\nstages:\n  a:\n    kind: command\n    matrix: {matrix}\n    with: {with}\n"
        )
    };
    assert_error(
        &stage("{x: [1, 2]}", "{run: 'echo ${matrix.y}'}"),
        "pipelines/m.yaml:6:",
        "`${matrix.y}` is not a matrix value of this stage; it has: x",
    );
    assert_error(
        &stage("{x: []}", "{run: 'true'}"),
        "pipelines/m.yaml:5:",
        "`x` has no values",
    );
    assert_error(
        &stage("{x: [1, 2], include: [{x: 2}]}", "{run: 'true'}"),
        "pipelines/m.yaml:5:",
        "this member is already in the matrix: x=2",
    );
    assert_error(
        &stage("{x: [1, 2], y: [a, b], name: '{x}'}", "{run: 'true'}"),
        "pipelines/m.yaml:5:",
        "two members of `a` are both `a@1`",
    );
    assert_error(
        &stage("{q: [a/b.sql, c.sql]}", "{run: 'true'}"),
        "pipelines/m.yaml:5:",
        "member id `a@q=a/b.sql` has `/`",
    );
    assert_error(
        "name: m\nstages:\n  a:\n    kind: command\n    with: {run: 'echo ${matrix.x}'}\n",
        "pipelines/m.yaml:5:",
        "`${matrix.x}`: this stage has no matrix values",
    );
}
