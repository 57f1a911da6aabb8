//! The `msdiff` binary as a user meets it: outputs, reproducibility, and one-line errors with
//! exit code 2 (never a panic, never a half-written output).
mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn msdiff(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .output()
        .expect("run msdiff")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("msdiff-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Exit code 2 with one `msdiff: error:` line containing `needle`.
fn assert_user_error(o: &Output, needle: &str) {
    let e = stderr(o);
    assert_eq!(o.status.code(), Some(2), "stderr: {e}");
    let lines: Vec<&str> = e.lines().filter(|l| l.starts_with("msdiff: error:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got: {e}");
    assert!(lines[0].contains(needle), "error line {:?} does not mention {needle:?}", lines[0]);
    assert!(!e.contains("panicked"), "{e}");
}

#[test]
fn sample_optimal_is_reproducible_and_batch_independent() {
    let d = tmp("sample");
    let run = |out: &Path, batch: &str| {
        let o = msdiff(&[
            "sample",
            "--model",
            "optimal",
            "--data",
            "builtin",
            "--data-limit",
            "50",
            "--sampler",
            "ddpm",
            "--steps",
            "30",
            "--seeds",
            "3-8",
            "--batch",
            batch,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let so = run(&d.join("a"), "6");
    run(&d.join("b"), "4");
    run(&d.join("c"), "6");
    let a = std::fs::read(d.join("a/samples.npy")).unwrap();
    assert_eq!(a, std::fs::read(d.join("b/samples.npy")).unwrap(), "batch size changed the samples");
    assert_eq!(a, std::fs::read(d.join("c/samples.npy")).unwrap(), "same seeds gave different samples");
    assert!(d.join("a/grid.png").is_file() && d.join("a/images/000005.png").is_file());
    // Ancestral sampling on the optimal denoiser lands on training images.
    let line = so.lines().find(|l| l.starts_with("nearest training image")).expect(&so);
    let mean: f64 = line.split("mean ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
    assert!(mean < 0.05, "{line}");
}

#[test]
fn sample_bad_input_is_a_clear_error() {
    let d = tmp("sample-bad");
    let out = d.join("o");
    let o = msdiff(&[
        "sample",
        "--model",
        "optimal",
        "--data-limit",
        "20",
        "--sampler",
        "nope",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.code() == Some(2) && stderr(&o).contains("invalid value 'nope' for '--sampler"), "{}", stderr(&o));
    let o =
        msdiff(&["sample", "--model", "optimal", "--data-limit", "20", "--steps", "0", "--out", out.to_str().unwrap()]);
    assert_user_error(&o, "steps");
    let o =
        msdiff(&["sample", "--model", "optimal", "--data", "mnist:/nonexistent/dir", "--out", out.to_str().unwrap()]);
    assert_user_error(&o, "/nonexistent/dir");
    // A truncated IDX file.
    let idx = d.join("bad-idx");
    std::fs::create_dir_all(&idx).unwrap();
    let mut bytes = vec![0u8, 0, 8, 3, 0, 0, 0, 10, 0, 0, 0, 28, 0, 0, 0, 28];
    bytes.extend(std::iter::repeat_n(7u8, 100));
    std::fs::write(idx.join("train-images-idx3-ubyte"), &bytes).unwrap();
    let o = msdiff(&[
        "sample",
        "--model",
        "optimal",
        "--data",
        &format!("idx:{}", idx.join("train-images-idx3-ubyte").display()),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    // Unreadable --init-noise.
    let noise = d.join("noise.npy");
    std::fs::write(&noise, b"not an npy file").unwrap();
    let o = msdiff(&[
        "sample",
        "--model",
        "optimal",
        "--data-limit",
        "20",
        "--init-noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_user_error(&o, "init-noise");
    // An --init-noise of the right shape but integers (an image, not x_T).
    msdiff::io::npy::write_npy(&noise, &tch::Tensor::zeros([2, 1, 16, 16], (tch::Kind::Uint8, tch::Device::Cpu)))
        .unwrap();
    let o = msdiff(&[
        "sample",
        "--model",
        "optimal",
        "--data-limit",
        "20",
        "--init-noise",
        noise.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_user_error(&o, "must be a float array");
    assert!(!out.join("samples.npy").exists(), "no output may be written on error");
    // A checkpoint that does not exist.
    let o = msdiff(&["sample", "--model", d.join("nothing").to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_user_error(&o, "does not exist");
    // More images than one call holds (the seed list alone would be 800 GB).
    let o = msdiff(&[
        "sample",
        "--model",
        "optimal",
        "--data-limit",
        "20",
        "--n",
        "99999999999",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_user_error(&o, "--n 99999999999 is too large");
    // Images that are neither grey nor RGB: a [4, 2, 8, 8] .npy.
    let npy = d.join("two-channels.npy");
    msdiff::io::npy::write_npy(&npy, &tch::Tensor::zeros([4, 2, 8, 8], (tch::Kind::Float, tch::Device::Cpu))).unwrap();
    let o = msdiff(&["sample", "--model", "optimal", "--data", npy.to_str().unwrap(), "--out", out.to_str().unwrap()]);
    assert_user_error(&o, "2 channels");
    assert!(!out.exists(), "no output may be written on error");
}

#[test]
fn sample_into_a_used_folder_leaves_no_stale_images() {
    let d = tmp("sample-again");
    let out = d.join("o");
    for n in ["6", "2"] {
        let o = msdiff(&[
            "sample",
            "--model",
            "optimal",
            "--data-limit",
            "20",
            "--sampler",
            "ddim",
            "--steps",
            "3",
            "--n",
            n,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let mut names: Vec<String> = std::fs::read_dir(out.join("images"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, ["000000.png", "000001.png"]);
}

#[test]
fn cluster_writes_a_split_and_refuses_bad_options() {
    let d = tmp("cluster");
    let out = d.join("snr.json");
    let o = msdiff(&["cluster", "--method", "snr", "--stages", "3", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = msdiff::cluster::Split::load(&out).unwrap();
    assert_eq!(s.boundaries_t, vec![0.348, 0.709]);
    let out = d.join("opt.json");
    let plot = d.join("opt.png");
    let o = msdiff(&[
        "cluster",
        "--data",
        "builtin",
        "--data-limit",
        "500",
        "--samples",
        "300",
        "--out",
        out.to_str().unwrap(),
        "--plot",
        plot.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = msdiff::cluster::Split::load(&out).unwrap();
    assert_eq!(s.stages, 3);
    assert!(plot.is_file());
    for (args, needle) in [
        (vec!["--alpha", "1.5"], "alpha"),
        (vec!["--alpha", "0"], "alpha"),
        (vec!["--eta", "0"], "eta"),
        (vec!["--stages", "1"], "stages"),
        (vec!["--stages", "999999999"], "between 2 and 64"),
        (vec!["--method", "snr", "--grid", "999999999999"], "--grid must be at most"),
        (vec!["--samples", "10"], "too few"),
        (
            vec!["--method", "kmeans"],
            "invalid value 'kmeans' for '--method <METHOD>' [possible values: optimal, uniform, snr, timestep, gradient]",
        ),
    ] {
        let mut a = vec!["cluster", "--data-limit", "100", "--out", "/dev/null/never"];
        a.extend(args);
        assert_user_error(&msdiff(&a), needle);
    }
}

#[test]
fn train_rejects_config_typos_and_dry_run_prints_the_resolved_config() {
    let d = tmp("train");
    let cfg = d.join("typo.toml");
    std::fs::write(&cfg, "[model]\npreset = \"tiny\"\n[optim]\nlearning_rate = 1e-3\n").unwrap();
    assert_user_error(&msdiff(&["train", "--config", cfg.to_str().unwrap()]), "learning_rate");
    std::fs::write(&cfg, "[model]\npreset = \"tiny\"\nbase_channels = 18\n[stages]\nmethod = \"uniform\"\n").unwrap();
    assert_user_error(&msdiff(&["train", "--config", cfg.to_str().unwrap()]), "divisible");
    std::fs::write(&cfg, "[data]\ncount = 64\n[model]\npreset = \"tiny\"\n[stages]\nmethod = \"snr\"\n").unwrap();
    let o = msdiff(&["train", "--config", cfg.to_str().unwrap(), "--dry-run"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("boundaries_t = [") && e.contains("0.348"), "{e}");
    assert!(!d.join("runs").exists());
}

#[test]
fn info_reports_the_paper_model() {
    let o = msdiff(&["info", "--preset", "cifar10-multistage"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("237169337") || s.contains("237,169,337"), "{s}");
    // A 3-stage split means nothing to a one-decoder net.
    let split = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/split-fashion-mnist.json");
    assert_user_error(
        &msdiff(&["info", "--preset", "small-unified", "--split", split.to_str().unwrap()]),
        "1 decoder(s)",
    );
}

#[test]
fn demo_runs_end_to_end() {
    let d = tmp("demo");
    let o =
        msdiff(&["demo", "--steps", "12", "--cluster-samples", "200", "--samples", "9", "--out", d.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    for f in [
        "report.md",
        "samples.png",
        "split.png",
        "split.json",
        "loss.png",
        "data.png",
        "run/config.toml",
        "run/metrics.jsonl",
    ] {
        assert!(d.join(f).is_file(), "demo did not write {f}");
    }
}

#[test]
fn ctrl_c_saves_a_checkpoint_and_resume_finishes_the_run() {
    let d = tmp("ctrlc");
    let cfg = d.join("run.toml");
    std::fs::write(
        &cfg,
        "[data]\ncount = 64\n[model]\npreset = \"tiny\"\n[stages]\nmethod = \"uniform\"\n[train]\nbatch = 8\nsteps = 100000\nlog_every = 1\ncheckpoint_every = 100000\n",
    )
    .unwrap();
    let run = d.join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .args([
            "--quiet",
            "--threads",
            "1",
            "train",
            "--no-samples",
            "--config",
            cfg.to_str().unwrap(),
            "--run",
            run.to_str().unwrap(),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until a few steps are logged, then interrupt as a terminal's Ctrl-C would.
    let started = std::time::Instant::now();
    loop {
        let n = std::fs::read_to_string(run.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0);
        if n >= 3 {
            break;
        }
        assert!(started.elapsed().as_secs() < 120, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let ok = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(ok.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let ck = msdiff::train::checkpoint::list(&run.join("checkpoints")).unwrap();
    let (step, _) = ck.last().expect("a checkpoint must be saved on Ctrl-C");
    assert!(*step >= 3);
    // A fresh run into the same folder would mix two runs' checkpoints; changing the batch or the
    // seed on resume would make a different experiment.
    let o = msdiff(&["train", "--no-samples", "--config", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert_user_error(&o, "already holds checkpoints");
    let o = msdiff(&["train", "--no-samples", "--resume", run.to_str().unwrap(), "--batch", "4"]);
    assert_user_error(&o, "--batch 4 cannot change on resume");
    assert_eq!(msdiff::train::checkpoint::list(&run.join("checkpoints")).unwrap().last().map(|c| c.0), Some(*step));
    // Resume from the run folder and finish a few more steps.
    let o = msdiff(&["train", "--no-samples", "--resume", run.to_str().unwrap(), "--steps", &(step + 2).to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ck = msdiff::train::checkpoint::list(&run.join("checkpoints")).unwrap();
    assert_eq!(ck.last().unwrap().0, step + 2);
}

/// Run msdiff in `dir` with the cache folder `cache` and no MSDIFF_FID_WEIGHTS: a machine with no
/// `../shared` beside the working directory.
fn msdiff_with_cache(dir: &Path, cache: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_msdiff"))
        .current_dir(dir)
        .env("MSDIFF_CACHE", cache)
        .env_remove("MSDIFF_FID_WEIGHTS")
        .args(["--quiet", "--threads", "2"])
        .args(args)
        .output()
        .expect("run msdiff")
}

/// `mnist` / `fashion-mnist` without a folder and `fid` without --weights use the fetched copies
/// (scripts/fetch-assets) in the cache folder; when they are missing, one error line says which
/// command fetches them.
#[test]
fn fetched_assets_are_found_without_flags_and_their_absence_is_one_clear_line() {
    let d = tmp("assets");
    let (work, cache) = (d.join("work"), d.join("cache"));
    std::fs::create_dir_all(&work).unwrap();
    let out = d.join("s");
    let sample = |spec: &str| {
        let args =
            ["sample", "--model", "optimal", "--data", spec, "--sampler", "ddpm", "--steps", "2", "--seeds", "0-1"];
        msdiff_with_cache(&work, &cache, &[&args[..], &["--out", out.to_str().unwrap()]].concat())
    };
    for (spec, name) in [("mnist", "mnist"), ("fashion-mnist:test", "fashion-mnist")] {
        assert_user_error(&sample(spec), &format!("run scripts/fetch-assets {name} "));
    }
    let o = msdiff_with_cache(
        &work,
        &cache,
        &["fid", "stats", "--data", "builtin", "--limit", "4", "--out", "x.safetensors"],
    );
    assert_user_error(&o, "run scripts/fetch-assets fid-weights");
    assert!(!work.join("x.safetensors").exists());
    // A fetched MNIST (four tiny IDX files): `mnist` and `mnist:test` find it.
    let m = cache.join("assets").join("mnist");
    std::fs::create_dir_all(&m).unwrap();
    use msdiff::data::idx::{encode_idx, IMAGES_MAGIC, LABELS_MAGIC};
    for (prefix, n) in [("train", 3u32), ("t10k", 2)] {
        let px: Vec<u8> = (0..n * 4 * 4).map(|i| (i * 7) as u8).collect();
        std::fs::write(m.join(format!("{prefix}-images-idx3-ubyte")), encode_idx(IMAGES_MAGIC, &[n, 4, 4], &px))
            .unwrap();
        std::fs::write(
            m.join(format!("{prefix}-labels-idx1-ubyte")),
            encode_idx(LABELS_MAGIC, &[n], &vec![1; n as usize]),
        )
        .unwrap();
    }
    for spec in ["mnist", "mnist:test", "mnist:train"] {
        let o = sample(spec);
        assert!(o.status.success(), "{spec}: {}", stderr(&o));
    }
    assert!(out.join("samples.npy").is_file() && out.join("images/000001.png").is_file());
    // `mnist:DIR` still means that folder.
    assert_user_error(&sample(&format!("mnist:{}", d.join("none").display())), "no such folder");
    std::fs::remove_dir_all(&d).ok();
}

/// `fid stats`, then `eval` of a 2-step tiny run: the same seeds give the same FID and other seeds
/// another; the JSON line records what was measured (step, n, seeds, precision, sampler, EMA); the
/// small-sample warning is printed once per side; a corrupt reference is a one-line error that appends
/// nothing to the log.
#[test]
fn eval_is_reproducible_and_logs_what_it_measured() {
    let Some(weights) = common::fid_weights() else { return };
    let w = weights.to_str().unwrap();
    let d = tmp("eval");
    let cfg = d.join("run.toml");
    std::fs::write(&cfg, "[data]\ncount = 32\n[model]\npreset = \"tiny\"\n[stages]\nmethod = \"uniform\"\n[train]\nbatch = 8\nsteps = 2\ncheckpoint_every = 2\n").unwrap();
    let run = d.join("run");
    let o = msdiff(&["train", "--no-samples", "--config", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let reference = d.join("ref.safetensors");
    let o = msdiff(&[
        "fid",
        "stats",
        "--data",
        "builtin",
        "--limit",
        "16",
        "--weights",
        w,
        "--fid-batch",
        "16",
        "--out",
        reference.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let log = d.join("fid.jsonl");
    let eval = |reference: &Path, extra: &[&str]| {
        let mut args = vec![
            "eval",
            "--checkpoint",
            run.to_str().unwrap(),
            "--ref",
            reference.to_str().unwrap(),
            "--n",
            "6",
            "--sampler",
            "euler",
        ];
        args.extend(["--steps", "3", "--weights", w, "--fid-batch", "6", "--log", log.to_str().unwrap()]);
        args.extend(extra);
        msdiff(&args)
    };
    for extra in [&["--precision", "bf16"][..], &["--precision", "bf16"], &["--seeds", "6-11"]] {
        let o = eval(&reference, extra);
        assert!(o.status.success(), "{}", stderr(&o));
        // The small-N warning, once per side.
        assert_eq!(stderr(&o).matches("FID statistics from only 6 samples").count(), 1, "{}", stderr(&o));
        assert_eq!(stderr(&o).matches("FID statistics from only 16 samples").count(), 1, "{}", stderr(&o));
    }
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 3);
    let fid = |i: usize| lines[i]["fid"].as_f64().unwrap();
    assert!(fid(0).is_finite() && fid(0) > 0.0, "{}", lines[0]);
    assert_eq!(fid(0), fid(1), "same seeds, same precision: the FID must repeat exactly");
    assert_ne!(fid(0), fid(2), "other seeds (and precision) gave the same FID");
    for (i, (precision, seeds)) in [("bf16", "0-5"), ("bf16", "0-5"), ("fp32", "6-11")].into_iter().enumerate() {
        let l = &lines[i];
        assert_eq!((l["precision"].as_str(), l["seeds"].as_str()), (Some(precision), Some(seeds)), "{l}");
        assert_eq!(
            (l["step"].as_u64(), l["n"].as_u64(), l["n_ref"].as_u64(), l["ema"].as_bool()),
            (Some(2), Some(6), Some(16), Some(true)),
            "{l}"
        );
        assert_eq!(l["sampler"]["kind"].as_str(), Some("euler"), "{l}");
    }
    // A corrupt reference: one error line, nothing appended.
    let bad = d.join("bad.safetensors");
    std::fs::write(&bad, b"not statistics").unwrap();
    assert_user_error(&eval(&bad, &[]), "bad.safetensors");
    assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 3);
}

/// Train a `tiny` model on 32 built-in images for `steps` steps (checkpoint every 2) into `d/run`,
/// with no warm-up and a fast EMA, so that even two steps move the weights.
fn tiny_run(d: &Path, steps: u32, stages: &str) -> PathBuf {
    let cfg = d.join("run.toml");
    let model = if stages == "unified" { "preset = \"tiny\"\ndecoder_channels = [16]" } else { "preset = \"tiny\"" };
    let split = if stages == "unified" { "" } else { "[stages]\nmethod = \"uniform\"\n" };
    let text = format!(
        "[data]\ncount = 32\n[model]\n{model}\n{split}[optim]\nwarmup_steps = 0\n[ema]\ndecay = 0.5\n[train]\nbatch = 8\nsteps = {steps}\ncheckpoint_every = 2\nkeep_last = 10\n"
    );
    std::fs::write(&cfg, text).unwrap();
    let run = d.join("run");
    let o = msdiff(&["train", "--no-samples", "--config", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    run
}

/// `msdiff sample`'s output is `msdiff fid`'s input: samples.npy holds the clipped images the
/// PNGs show (raw.npy the solver's output), and `fid stats --images samples.npy` takes it.
#[test]
fn sample_output_feeds_fid_stats() {
    let d = tmp("roundtrip");
    let run = tiny_run(&d, 2, "multistage");
    let out = d.join("s");
    let o = msdiff(&[
        "sample",
        "--model",
        run.to_str().unwrap(),
        "--raw",
        "--sampler",
        "euler",
        "--steps",
        "3",
        "--n",
        "6",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let raw = msdiff::io::npy::read_npy(&out.join("raw.npy")).unwrap();
    let shown = msdiff::io::npy::read_npy(&out.join("samples.npy")).unwrap();
    // An almost untrained network overshoots [-1, 1]: the case that used to be refused.
    assert!(raw.abs().max().double_value(&[]) > 1.0, "the test needs samples outside [-1, 1]");
    assert_eq!(shown, raw.clamp(-1.0, 1.0));
    let Some(weights) = common::fid_weights() else { return };
    let stats = d.join("s.safetensors");
    let o = msdiff(&[
        "fid",
        "stats",
        "--images",
        out.join("samples.npy").to_str().unwrap(),
        "--weights",
        weights.to_str().unwrap(),
        "--fid-batch",
        "6",
        "--out",
        stats.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stats.is_file());
}

/// `fid stats --pad 2` (Fashion-MNIST's 28x28 against a latent model's decoded 32x32) scores exactly
/// the images padded with -1, as `autoencoder encode --pad` pads them.
#[test]
fn fid_stats_pads_the_dataset() {
    let Some(weights) = common::fid_weights() else { return };
    let d = tmp("fid-pad");
    let ds =
        msdiff::data::load("builtin", &msdiff::data::LoadOptions { limit: Some(3), ..Default::default() }).unwrap();
    let padded = msdiff::autoencoder::eval::pad_images(&ds.images, 2);
    assert_eq!(padded.size()[2], ds.images.size()[2] + 4);
    msdiff::io::npy::write_npy(&d.join("p.npy"), &padded).unwrap();
    let stats = |src: &[&str], out: &str| {
        let mut a = vec!["fid", "stats", "--weights", weights.to_str().unwrap(), "--out"];
        let out = d.join(out);
        a.push(out.to_str().unwrap());
        a.extend_from_slice(src);
        let o = msdiff(&a);
        assert!(o.status.success(), "{}", stderr(&o));
        tch::Tensor::read_safetensors(&out).unwrap().into_iter().collect::<std::collections::BTreeMap<_, _>>()
    };
    let a = stats(&["--data", "builtin", "--limit", "3", "--pad", "2"], "a.safetensors");
    let b = stats(&["--images", d.join("p.npy").to_str().unwrap()], "b.safetensors");
    // The same images through the same network in two processes: equal up to the order of
    // libtorch's float32 reductions, far below what a pixel of padding changes.
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for ((na, ta), (nb, tb)) in a.iter().zip(&b) {
        assert_eq!(na, nb);
        let scale = tb.abs().max().double_value(&[]);
        let d = (ta - tb).abs().max().double_value(&[]);
        assert!(d <= 1e-5 * scale, "{na} differs by {d} (scale {scale})");
    }
    std::fs::remove_dir_all(&d).ok();
}

/// `msdiff val-loss`: one JSON line per checkpoint with --all, the same scores for the same seed,
/// and one-line errors for a one-stage model without intervals and for bad cuts.
#[test]
fn val_loss_scores_every_checkpoint_reproducibly() {
    let d = tmp("val-loss");
    let run = tiny_run(&d, 4, "multistage");
    let log = d.join("val.jsonl");
    let args = |extra: &[&str]| {
        let mut a = vec![
            "val-loss",
            "--checkpoint",
            run.to_str().unwrap(),
            "--data",
            "builtin",
            "--limit",
            "12",
            "--batch",
            "5",
        ];
        a.extend_from_slice(extra);
        msdiff(&a)
    };
    let o = args(&["--all", "--log", log.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let per = d.join("per-image");
    let o = args(&["--log", log.to_str().unwrap(), "--per-image", per.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> =
        std::fs::read_to_string(&log).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.iter().map(|l| l["step"].as_u64().unwrap()).collect::<Vec<_>>(), vec![2, 4, 4]);
    assert_eq!(lines[1]["loss"], lines[2]["loss"], "the same checkpoint and seed must score the same");
    // --per-image: [K, n] losses at DIR/RUN/step-N.npy whose row means are the logged losses.
    let npy = per.join(run.file_name().unwrap()).join("step-4.npy");
    assert_eq!(lines[2]["per_image"].as_str(), Some(npy.to_str().unwrap()));
    let t = msdiff::io::read_npy(&npy).unwrap();
    assert_eq!(t.size(), [3, 12]);
    let means = Vec::<f64>::try_from(t.mean_dim(1, false, tch::Kind::Double)).unwrap();
    for (m, l) in means.iter().zip(lines[2]["loss"].as_array().unwrap()) {
        assert!((m - l.as_f64().unwrap()).abs() < 1e-12, "per-image mean {m} vs logged {l}");
    }
    assert_ne!(lines[0]["loss"], lines[1]["loss"], "two checkpoints scored the same");
    assert_eq!(lines[0]["loss"].as_array().unwrap().len(), 3);
    assert_user_error(&args(&["--cuts", "0.7,0.3"]), "--cuts must be increasing");
    let u = tmp("val-loss-unified");
    let unified = tiny_run(&u, 2, "unified");
    let o = msdiff(&["val-loss", "--checkpoint", unified.to_str().unwrap(), "--data", "builtin", "--limit", "4"]);
    assert_user_error(&o, "give --split or --cuts");
    let o = msdiff(&[
        "val-loss",
        "--checkpoint",
        unified.to_str().unwrap(),
        "--data",
        "builtin",
        "--limit",
        "4",
        "--cuts",
        "0.442,0.631",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `msdiff import`: weights exported elsewhere (here: a trained tiny-edm's, under EDM's `model.`
/// prefix) become a step-0 run that sample reads, with weights = EMA = the imported ones; weights
/// of another architecture are one clear line and leave no run behind.
#[test]
fn import_makes_a_run_from_exported_weights() {
    let d = tmp("import");
    let cfg = d.join("edm.toml");
    std::fs::write(
        &cfg,
        "[data]\ncount = 32\n[model]\npreset = \"tiny-edm\"\n[process]\nkind = \"edm\"\n[stages]\nboundaries_t = [0.442, 0.636]\n[train]\nbatch = 8\nsteps = 2\ncheckpoint_every = 2\n",
    )
    .unwrap();
    let run = d.join("run");
    let o = msdiff(&["train", "--no-samples", "--config", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (_, t) = msdiff::train::checkpoint::load(&run).unwrap();
    let exported: Vec<(String, tch::Tensor)> =
        t.model.iter().map(|(n, x)| (format!("model.{n}"), x.shallow_clone())).collect();
    let weights = d.join("exported.safetensors");
    tch::Tensor::write_safetensors(&exported, &weights).unwrap();
    let imported = d.join("imported");
    let o = msdiff(&[
        "import",
        "--weights",
        weights.to_str().unwrap(),
        "--config",
        cfg.to_str().unwrap(),
        "--out",
        imported.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (state, u) = msdiff::train::checkpoint::load(&imported).unwrap();
    assert_eq!(state.step, 0);
    for ((n, a), (_, b)) in t.model.iter().zip(&u.ema) {
        assert!(a.equal(b), "EMA '{n}' differs from the imported weight");
    }
    let out = d.join("s");
    let o = msdiff(&[
        "sample",
        "--model",
        imported.to_str().unwrap(),
        "--sampler",
        "heun",
        "--steps",
        "3",
        "--n",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    // The same weights into an NCSN++ run: one line naming what does not fit, no run folder.
    let other = d.join("ncsnpp.toml");
    std::fs::write(&other, "[data]\ncount = 32\n[model]\npreset = \"tiny\"\n[stages]\nmethod = \"uniform\"\n").unwrap();
    let bad = d.join("bad");
    assert_user_error(
        &msdiff(&[
            "import",
            "--weights",
            weights.to_str().unwrap(),
            "--config",
            other.to_str().unwrap(),
            "--out",
            bad.to_str().unwrap(),
        ]),
        "another model configuration",
    );
    assert!(!bad.join("checkpoints").exists());
}

/// Out of memory in training: exit 2, one error line naming the batch, no C++ trace, no checkpoint.
#[test]
fn train_out_of_memory_is_one_clear_line() {
    if !common::refuses_a_512_gib_allocation() {
        return;
    }
    let d = tmp("oom");
    let cfg = d.join("oom.toml");
    std::fs::write(&cfg, common::oom_config()).unwrap();
    let run = d.join("run");
    let o = msdiff(&["train", "--no-samples", "--config", cfg.to_str().unwrap(), "--run", run.to_str().unwrap()]);
    assert_user_error(&o, "out of memory at batch size 32");
    let e = stderr(&o);
    assert!(!e.contains("frame #") && !e.contains("enforce fail"), "the libtorch trace leaked: {e}");
    assert!(e.contains("libtorch: DefaultCPUAllocator: can't allocate memory"), "{e}");
    assert!(!run.join("checkpoints").exists() || std::fs::read_dir(run.join("checkpoints")).unwrap().next().is_none());
}
