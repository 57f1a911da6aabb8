//! Data-parallel training on c10d's Gloo backend (CPU), with ranks spawned as processes of the
//! msdiff binary: N ranks reproduce the one-process run, resume across rank counts, stop
//! together on a failure, and refuse a bad environment in one line.
mod common;
use common::{all_tensors, tmp};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_msdiff");

/// The tiny configuration without dropout (each rank draws its own dropout masks, the one thing
/// that differs from one process), 20 steps at global batch 8, mixed stages.
fn config(dir: &Path) -> PathBuf {
    let text = common::tiny_config("").replace("dropout = 0.1", "dropout = 0.0").replace("steps = 6", "steps = 20");
    let p = dir.join("dist.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn msdiff(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(["--threads", "1", "--device", "cpu", "--quiet"]).args(args);
    for v in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_USE_AGENT_STORE"] {
        c.env_remove(v);
    }
    c
}

fn ok(out: Output, what: &str) -> String {
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{what} failed ({:?}): {err}", out.status);
    err
}

/// `msdiff launch --nproc n -- <global flags> args...`.
fn launch(n: usize, args: &[&str]) -> Output {
    let mut c = Command::new(BIN);
    c.args(["launch", "--nproc", &n.to_string(), "--", "--threads", "1", "--device", "cpu", "--quiet"]).args(args);
    c.output().unwrap()
}

fn train_args<'a>(cfg: &'a str, run: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut v = vec!["train", "--config", cfg, "--run", run, "--no-samples"];
    v.extend_from_slice(extra);
    v
}

fn newest(run: &Path) -> PathBuf {
    msdiff::train::checkpoint::resolve(run).unwrap()
}

/// Every tensor of two checkpoints (weights, EMA, Adam moments) within `tol`, relative to the
/// tensor's largest magnitude where that exceeds 1 (Adam's moments of a summed loss are large).
fn assert_close(a: &Path, b: &Path, tol: f64, what: &str) {
    let (x, y) = (all_tensors(a), all_tensors(b));
    assert_eq!(x.len(), y.len());
    let mut worst = 0f64;
    for ((n1, t1), (n2, t2)) in x.iter().zip(&y) {
        assert_eq!(n1, n2);
        let d = (t1 - t2).abs().max().double_value(&[]) / t1.abs().max().double_value(&[]).max(1.0);
        assert!(d <= tol, "{what}: {n1} differs by {d}");
        worst = worst.max(d);
    }
    eprintln!("{what}: largest difference {worst:e}");
}

#[test]
fn two_ranks_equal_one_process_and_resume_across_rank_counts() {
    let dir = tmp("dist-equal");
    let cfg = config(&dir);
    let cfg = cfg.to_str().unwrap();
    let run = |name: &str| dir.join(name).to_string_lossy().to_string();
    let (a, b, c, d) = (run("one"), run("two"), run("two-then-one"), run("one-then-two"));
    ok(msdiff(&train_args(cfg, &a, &[])).output().unwrap(), "one process");
    // Two ranks: the ranks' weights are checked bit-identical at the end (an error otherwise).
    let err = ok(launch(2, &train_args(cfg, &b, &[])), "two ranks");
    assert!(err.contains("training on 2 ranks (gloo"), "{err}");
    assert_close(&newest(Path::new(&a)), &newest(Path::new(&b)), 1e-5, "2 ranks vs 1 process");
    // Half on two ranks, the rest on one process; and the other way round.
    ok(launch(2, &train_args(cfg, &c, &["--steps", "10"])), "two ranks, 10 steps");
    ok(msdiff(&["train", "--resume", &c, "--no-samples", "--steps", "20"]).output().unwrap(), "resume on one process");
    ok(msdiff(&train_args(cfg, &d, &["--steps", "10"])).output().unwrap(), "one process, 10 steps");
    ok(launch(2, &["train", "--resume", &d, "--no-samples", "--steps", "20"]), "resume on two ranks");
    for (r, what) in [(&c, "2 ranks then 1 process"), (&d, "1 process then 2 ranks")] {
        let ck = newest(Path::new(r));
        assert!(ck.ends_with("step-00000020"), "{}", ck.display());
        assert_close(&newest(Path::new(&a)), &ck, 1e-5, what);
    }
    // Only rank 0 writes: one metrics line per step.
    let lines = std::fs::read_to_string(Path::new(&b).join("metrics.jsonl")).unwrap().lines().count();
    assert_eq!(lines, 20);
}

#[test]
fn a_batch_that_does_not_divide_over_the_ranks_is_refused() {
    let dir = tmp("dist-divide");
    let cfg = config(&dir);
    let run = dir.join("r");
    // Global flags before `launch` reach every rank.
    let out = Command::new(BIN)
        .args(["--threads", "1", "--device", "cpu", "--quiet", "launch", "--nproc", "3", "--"])
        .args(train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &[]))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("train.batch = 8 does not divide over 3 ranks"), "{err}");
}

/// A rank killed mid-run: the other exits non-zero within the timeout, naming itself and the
/// failed collective; the last checkpoint stays intact.
#[test]
fn a_killed_rank_stops_the_other_with_a_clear_message() {
    let dir = tmp("dist-kill");
    let cfg = config(&dir);
    let run = dir.join("r");
    let port = msdiff::dist::launch::free_port().unwrap().to_string();
    let spawn = |rank: &str| {
        msdiff(&train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &["--steps", "100000"]))
            .envs([("RANK", rank), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)])
            .env("MSDIFF_DIST_TIMEOUT", "60")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (r0, mut r1) = (spawn("0"), spawn("1"));
    let ckpts = run.join("checkpoints");
    let began = Instant::now();
    while msdiff::train::checkpoint::list(&ckpts).map(|l| l.is_empty()).unwrap_or(true) {
        assert!(began.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    r1.kill().unwrap();
    let _ = r1.wait();
    let killed = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(killed.elapsed() < Duration::from_secs(30), "rank 0 took {:?} to stop", killed.elapsed());
    assert_eq!(out.status.code(), Some(2), "{err}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.starts_with("msdiff: error: rank 0 of 2: ") && last.contains("failed"), "{err}");
    // The checkpoints written are complete.
    for (_, p) in msdiff::train::checkpoint::list(&ckpts).unwrap() {
        msdiff::train::checkpoint::load(&p).unwrap();
    }
}

/// A rank that hangs (stopped with SIGSTOP): the other's collective times out after
/// MSDIFF_DIST_TIMEOUT and it exits non-zero, saying so.
#[test]
fn a_hung_rank_makes_the_other_time_out() {
    let dir = tmp("dist-hang");
    let cfg = config(&dir);
    let run = dir.join("r");
    let port = msdiff::dist::launch::free_port().unwrap().to_string();
    let spawn = |rank: &str| {
        msdiff(&train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &["--steps", "100000"]))
            .envs([("RANK", rank), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)])
            .env("MSDIFF_DIST_TIMEOUT", "3")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (r0, mut r1) = (spawn("0"), spawn("1"));
    let metrics = run.join("metrics.jsonl");
    let began = Instant::now();
    while std::fs::read_to_string(&metrics).map(|s| s.lines().count() < 2).unwrap_or(true) {
        assert!(began.elapsed() < Duration::from_secs(120), "no training after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(r1.id() as i32, 19) };
    let stopped = Instant::now();
    let out = r0.wait_with_output().unwrap();
    let waited = stopped.elapsed();
    r1.kill().unwrap();
    let _ = r1.wait();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(waited < Duration::from_secs(30), "rank 0 took {waited:?}");
    let last = err.lines().last().unwrap_or("");
    assert!(last.contains("MSDIFF_DIST_TIMEOUT = 3 s") && last.contains("timed out"), "{err}");
}

/// `msdiff launch` forwards Ctrl-C: every rank finishes its step, rank 0 saves, all exit 130.
#[test]
fn ctrl_c_to_the_launcher_stops_every_rank_with_a_checkpoint() {
    let dir = tmp("dist-ctrlc");
    let cfg = config(&dir);
    let run = dir.join("r");
    let mut c = Command::new(BIN);
    c.args(["launch", "--nproc", "2", "--", "--threads", "1", "--device", "cpu", "--quiet"])
        .args(train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &["--steps", "100000"]))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = c.spawn().unwrap();
    let metrics = run.join("metrics.jsonl");
    let began = Instant::now();
    while std::fs::read_to_string(&metrics).map(|s| s.lines().count() < 3).unwrap_or(true) {
        assert!(began.elapsed() < Duration::from_secs(120), "no training after 120 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: kill(2) on our own child.
    unsafe { libc_kill(child.id() as i32, 2) };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stdout.contains("interrupted at step"), "{stdout} {stderr}");
    let ck = newest(&run);
    msdiff::train::checkpoint::load(&ck).unwrap();
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

/// A bad environment is one `msdiff: error:` line naming what to fix; an unreachable master
/// (also what rank 0 sees when torchrun's agent is meant to host the store) fails after the
/// timeout with one line.
#[test]
fn a_bad_environment_is_a_one_line_error() {
    let dir = tmp("dist-env");
    let cfg = config(&dir);
    let run = dir.join("r");
    let port = msdiff::dist::launch::free_port().unwrap().to_string();
    let cases: Vec<(Vec<(&str, &str)>, &str)> = vec![
        (vec![("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1")], "MASTER_PORT is not set"),
        (
            vec![("RANK", "0"), ("WORLD_SIZE", "0"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)],
            "WORLD_SIZE must be at least 1",
        ),
        (
            vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)],
            "RANK 2 is out of range",
        ),
        (
            vec![("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)],
            "rank 1 cannot reach the rendezvous store",
        ),
        (
            vec![
                ("RANK", "0"),
                ("WORLD_SIZE", "2"),
                ("MASTER_ADDR", "127.0.0.1"),
                ("MASTER_PORT", &port),
                ("TORCHELASTIC_USE_AGENT_STORE", "True"),
            ],
            "which TORCHELASTIC_USE_AGENT_STORE=True says torchrun's agent hosts",
        ),
    ];
    for (vars, expected) in cases {
        let began = Instant::now();
        let out = msdiff(&train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &[]))
            .envs(vars.iter().copied())
            .env("MSDIFF_DIST_TIMEOUT", "2")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{vars:?}: {err}");
        let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("msdiff: error:")).collect();
        assert_eq!(errors.len(), 1, "{err}");
        assert!(errors[0].contains(expected), "{vars:?}: {err}");
        assert!(began.elapsed() < Duration::from_secs(30), "{vars:?} took {:?}", began.elapsed());
    }
}

/// The `rank` stage policy: rank r trains stage r mod K only; K = 3 stages need 3 ranks.
#[test]
fn the_rank_stage_policy_trains_each_stage_on_its_own_ranks() {
    let dir = tmp("dist-rank-policy");
    let text =
        std::fs::read_to_string(config(&dir)).unwrap().replace("[optim]", "[objective]\npolicy = \"rank\"\n[optim]");
    let cfg = dir.join("rank.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let run = dir.join("r");
    let out = launch(2, &train_args(cfg, run.to_str().unwrap(), &["--steps", "2"]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs at least 3 ranks (got 2)"), "{err}");
    ok(launch(3, &train_args(cfg, run.to_str().unwrap(), &["--steps", "4", "--batch", "9"])), "3 ranks");
    // Each step's 9 samples are 3 per stage: every stage has a loss in every line.
    let metrics = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let by_stage = v["loss_by_stage"].as_array().unwrap();
        assert!(by_stage.len() == 3 && by_stage.iter().all(|l| l.is_number()), "{line}");
        assert!(v["allreduce_s"].as_f64().unwrap() > 0.0, "{line}");
    }
}

/// `msdiff eval` on 2 ranks (seeds split, Inception features gathered) reports one process's FID.
#[test]
fn eval_on_two_ranks_gives_the_one_process_fid() {
    let Some(weights) = common::fid_weights() else { return };
    let w = weights.to_str().unwrap();
    let dir = tmp("dist-eval");
    let cfg = config(&dir);
    let run = dir.join("run");
    let run = run.to_str().unwrap();
    ok(msdiff(&train_args(cfg.to_str().unwrap(), run, &["--steps", "2"])).output().unwrap(), "train");
    let reference = dir.join("ref.safetensors");
    let r = reference.to_str().unwrap();
    let stats = ["fid", "stats", "--data", "builtin", "--limit", "16", "--weights", w, "--fid-batch", "16", "--out", r];
    ok(msdiff(&stats).output().unwrap(), "fid stats");
    let log = |name: &str| dir.join(name).to_string_lossy().to_string();
    let (l1, l2) = (log("one.jsonl"), log("two.jsonl"));
    let eval = |l: &str| -> Vec<String> {
        ["eval", "--checkpoint", run, "--ref", r, "--n", "7", "--sampler", "euler", "--steps", "3"]
            .iter()
            .map(|s| s.to_string())
            .chain(["--weights", w, "--fid-batch", "4", "--batch", "4", "--log", l].iter().map(|s| s.to_string()))
            .collect()
    };
    let a1 = eval(&l1);
    ok(msdiff(&a1.iter().map(String::as_str).collect::<Vec<_>>()).output().unwrap(), "eval on one process");
    let a2 = eval(&l2);
    let out = launch(2, &a2.iter().map(String::as_str).collect::<Vec<_>>());
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    ok(out, "eval on two ranks");
    assert_eq!(stdout.matches("FID ").count(), 1, "rank 0 alone reports: {stdout}");
    let fid = |p: &str| -> f64 {
        let text = std::fs::read_to_string(p).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        serde_json::from_str::<serde_json::Value>(text.trim()).unwrap()["fid"].as_f64().unwrap()
    };
    let (f1, f2) = (fid(&l1), fid(&l2));
    eprintln!("FID one process {f1}, two ranks {f2}");
    assert!((f1 - f2).abs() <= 1e-6 * f1.abs().max(1.0), "{f1} vs {f2}");
}

/// EDM's recipe (its stage policy, sum loss, augmentation drawn over the global batch) on 2 ranks
/// equals one process too.
#[test]
fn edm_with_augmentation_on_two_ranks_equals_one_process() {
    let dir = tmp("dist-edm");
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/tiny-edm.toml"))
        .unwrap()
        .replace("count = 2000", "count = 64")
        .replace("preset = \"tiny-edm\"", "preset = \"tiny-edm\"\ndropout = 0.0")
        .replace("batch = 32", "batch = 8")
        .replace("steps = 2000", "steps = 6")
        .replace("log_every = 50", "log_every = 1");
    let cfg = dir.join("edm.toml");
    std::fs::write(&cfg, text).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (a, b) = (dir.join("one"), dir.join("two"));
    ok(msdiff(&train_args(cfg, a.to_str().unwrap(), &[])).output().unwrap(), "one process");
    ok(launch(2, &train_args(cfg, b.to_str().unwrap(), &[])), "two ranks");
    assert_close(&newest(&a), &newest(&b), 1e-5, "EDM + augmentation, 2 ranks vs 1 process");
}

/// A diverging run stops every rank with the one-process message.
#[test]
fn a_diverging_run_stops_every_rank() {
    let dir = tmp("dist-nan");
    let text = std::fs::read_to_string(config(&dir)).unwrap().replace("lr = 1e-3", "lr = 1e6\ngrad_clip = 0.0");
    let cfg = dir.join("nan.toml");
    std::fs::write(&cfg, text).unwrap();
    let run = dir.join("r");
    let out = launch(2, &train_args(cfg.to_str().unwrap(), run.to_str().unwrap(), &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("training stopped"), "{err}");
    assert!(!err.contains("all-reduce failed"), "every rank must stop on its own: {err}");
}

/// torchrun itself, when the libtorch came from a PyTorch install (scripts/with-libtorch's venv):
/// its agent hosts the store (TORCHELASTIC_USE_AGENT_STORE=True) and the ranks train as under
/// `msdiff launch`. SKIPPED without that Python.
#[test]
fn torchrun_launches_the_ranks_with_its_agent_store() {
    let python = std::env::var_os("LIBTORCH")
        .map(PathBuf::from)
        .and_then(|t| t.ancestors().nth(4).map(|venv| venv.join("bin").join("python")))
        .filter(|p| p.is_file());
    let Some(python) = python else {
        eprintln!("SKIPPED: no Python with torch next to LIBTORCH (run under scripts/with-libtorch)");
        return;
    };
    let dir = tmp("dist-torchrun");
    let cfg = config(&dir);
    let port = msdiff::dist::launch::free_port().unwrap().to_string();
    // torchrun's parser would take msdiff's --run for an abbreviation of its --run-path: the run
    // folder is the default, runs/dist under the working folder.
    let out = Command::new(python)
        .current_dir(&dir)
        .args(["-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", &port, "--no-python", BIN])
        .args(["--threads", "1", "--device", "cpu", "--quiet", "train", "--config", cfg.to_str().unwrap()])
        .arg("--no-samples")
        .output()
        .unwrap();
    let err = ok(out, "torchrun");
    assert!(err.contains("training on 2 ranks (gloo"), "{err}");
    let one = dir.join("one");
    ok(msdiff(&train_args(cfg.to_str().unwrap(), one.to_str().unwrap(), &[])).output().unwrap(), "one process");
    assert_close(&newest(&one), &newest(&dir.join("runs").join("dist")), 1e-5, "torchrun 2 ranks vs 1 process");
}

/// A group of one (what an NCCL run on one GPU is) trains bit for bit as the plain process,
/// dropout included: the all-reduce path changes nothing.
#[test]
fn a_world_of_one_is_bit_identical_to_one_process() {
    let dir = tmp("dist-world1");
    let cfg = dir.join("w1.toml");
    std::fs::write(&cfg, common::tiny_config("").replace("steps = 6", "steps = 8")).unwrap();
    let cfg = cfg.to_str().unwrap();
    let (a, b) = (dir.join("plain"), dir.join("world1"));
    ok(msdiff(&train_args(cfg, a.to_str().unwrap(), &[])).output().unwrap(), "plain");
    let port = msdiff::dist::launch::free_port().unwrap().to_string();
    let out = msdiff(&train_args(cfg, b.to_str().unwrap(), &[]))
        .envs([("RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"), ("MASTER_PORT", &port)])
        .output()
        .unwrap();
    let err = ok(out, "world of one");
    assert!(err.contains("training on 1 ranks (gloo"), "{err}");
    let (x, y) = (all_tensors(&newest(&a)), all_tensors(&newest(&b)));
    for ((n, t1), (_, t2)) in x.iter().zip(&y) {
        assert!(t1.equal(t2), "{n} differs");
    }
}
