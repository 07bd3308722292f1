//! Optimisers against reference trajectories computed independently (numpy transcription of PyTorch's update
//! rules, `fixtures/optim/make_reference.py`), plus state round trips, schedules, clipping and validation.

use candle_core::{backprop::GradStore, DType, Device, Tensor, Var};
use distill_core::{
    checkpoint::{read_safetensors, write_safetensors_atomic},
    Error, Result, Rng,
};
use distill_nn::optim::{
    build_optimizer, clip_grad_norm, grad_norm, AdamW, AdamWParams, Optimizer, OptimizerConfig,
    OptimizerKind, ScheduleConfig, ScheduleKind, Sgd, SgdParams,
};
use serde_json::Value;

const REFERENCE: &str = include_str!("fixtures/optim/reference.json");

fn reference() -> Value {
    serde_json::from_str(REFERENCE).expect("reference.json parses")
}

fn matrix(v: &Value) -> Vec<Vec<f64>> {
    serde_json::from_value(v.clone()).expect("matrix")
}

fn vector(v: &Value) -> Vec<f64> {
    serde_json::from_value(v.clone()).expect("vector")
}

fn tensor2(rows: &[Vec<f64>], dtype: DType) -> Result<Tensor> {
    let r = rows.len();
    let c = rows[0].len();
    let flat: Vec<f64> = rows.iter().flatten().copied().collect();
    Ok(Tensor::from_vec(flat, (r, c), &Device::Cpu)?.to_dtype(dtype)?)
}

/// How the optimiser under test runs.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Path {
    /// `build_optimizer` on f32 CPU parameters: the fused kernels.
    Fused,
    /// The generic tensor-op path on f32 CPU parameters.
    Generic,
    /// f64 parameters, which always take the generic path.
    F64,
}

fn make_optimizer(
    cfg: &OptimizerConfig,
    vars: Vec<(String, Var)>,
    path: Path,
) -> Result<Box<dyn Optimizer>> {
    if path == Path::Fused {
        return build_optimizer(cfg, vars);
    }
    cfg.validate()?;
    Ok(match cfg.kind {
        OptimizerKind::Sgd => {
            let mut o = Sgd::new(
                vars,
                SgdParams {
                    lr: cfg.lr,
                    momentum: cfg.momentum,
                    nesterov: cfg.nesterov,
                    weight_decay: cfg.weight_decay_or_default(),
                },
            )?;
            o.set_fused(false);
            Box::new(o)
        }
        OptimizerKind::Adamw | OptimizerKind::Adam => {
            let [beta1, beta2] = cfg.betas_or_default();
            let mut o = AdamW::new(
                vars,
                AdamWParams {
                    lr: cfg.lr,
                    beta1,
                    beta2,
                    eps: cfg.eps_or_default(),
                    weight_decay: cfg.weight_decay_or_default(),
                    coupled: cfg.kind == OptimizerKind::Adam,
                },
            )?;
            o.set_fused(false);
            Box::new(o)
        }
    })
}

/// The regression problem of the fixture: data, and fresh parameters at the initial point.
struct Problem {
    x: Tensor,
    y: Tensor,
    w: Var,
    c: Var,
}

impl Problem {
    fn new(dtype: DType) -> Result<Self> {
        let r = reference();
        let p = &r["problem"];
        let w0 = tensor2(&matrix(&p["W0"]), dtype)?;
        let c0 = Tensor::new(vector(&p["c0"]).as_slice(), &Device::Cpu)?.to_dtype(dtype)?;
        Ok(Self {
            x: tensor2(&matrix(&p["X"]), dtype)?,
            y: tensor2(&matrix(&p["Y"]), dtype)?,
            w: Var::from_tensor(&w0)?,
            c: Var::from_tensor(&c0)?,
        })
    }

    fn vars(&self) -> Vec<(String, Var)> {
        vec![
            ("fc.weight".to_string(), self.w.clone()),
            ("fc.bias".to_string(), self.c.clone()),
        ]
    }

    /// 0.5·Σ‖W x + c − y‖², differentiated by candle.
    fn grads(&self) -> Result<GradStore> {
        let pred = self
            .x
            .matmul(&self.w.as_tensor().t()?)?
            .broadcast_add(self.c.as_tensor())?;
        let loss = ((pred - &self.y)?.sqr()?.sum_all()? * 0.5)?;
        Ok(loss.backward()?)
    }

    fn snapshot(&self) -> Result<(Vec<f64>, Vec<f64>)> {
        Ok((
            self.w
                .as_tensor()
                .flatten_all()?
                .to_dtype(DType::F64)?
                .to_vec1()?,
            self.c.as_tensor().to_dtype(DType::F64)?.to_vec1()?,
        ))
    }

    fn set(&self, w: &[f64], c: &[f64]) -> Result<()> {
        let dtype = self.w.dtype();
        self.w
            .set(&Tensor::from_slice(w, self.w.shape(), &Device::Cpu)?.to_dtype(dtype)?)?;
        self.c
            .set(&Tensor::from_slice(c, self.c.shape(), &Device::Cpu)?.to_dtype(dtype)?)?;
        Ok(())
    }
}

#[test]
fn optimisers_follow_the_reference_trajectories() -> Result<()> {
    let r = reference();
    let cases = r["cases"].as_array().expect("cases");
    assert_eq!(cases.len(), 7);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let cfg: OptimizerConfig = serde_json::from_value(case["config"].clone()).unwrap();
        let expected = case["trajectory"].as_array().unwrap();
        for path in [Path::Fused, Path::Generic, Path::F64] {
            let dtype = if path == Path::F64 {
                DType::F64
            } else {
                DType::F32
            };
            let prob = Problem::new(dtype)?;
            let mut opt = make_optimizer(&cfg, prob.vars(), path)?;
            for (t, exp) in expected.iter().enumerate() {
                let grads = prob.grads()?;
                opt.step(&grads)?;
                let (w, c) = prob.snapshot()?;
                let ew: Vec<f64> = matrix(&exp["W"]).into_iter().flatten().collect();
                let ec = vector(&exp["c"]);
                for (got, want) in w.iter().chain(&c).zip(ew.iter().chain(&ec)) {
                    assert!(
                        (got - want).abs() < 1e-5,
                        "{name} ({path:?}) step {}: got {got}, want {want}\n W {w:?}\n want {ew:?}\n c {c:?}\n want {ec:?}",
                        t + 1
                    );
                }
            }
            assert_eq!(opt.state()?["step"].to_vec1::<i64>()?, vec![5]);
        }
    }
    Ok(())
}

fn sgd_cfg() -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Sgd,
        lr: 0.05,
        momentum: 0.9,
        nesterov: true,
        weight_decay: Some(0.01),
        betas: None,
        eps: None,
        decay_only: None,
    }
}

fn adamw_cfg() -> OptimizerConfig {
    OptimizerConfig {
        kind: OptimizerKind::Adamw,
        lr: 0.05,
        momentum: 0.0,
        nesterov: false,
        weight_decay: Some(0.1),
        betas: Some([0.8, 0.95]),
        eps: Some(1e-6),
        decay_only: None,
    }
}

fn bits(v: &[f64]) -> Vec<u64> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn state_round_trip_continues_bit_identically() -> Result<()> {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [sgd_cfg(), adamw_cfg()] {
        for path in [Path::Fused, Path::Generic] {
            // five uninterrupted steps
            let full = Problem::new(DType::F32)?;
            let mut opt = make_optimizer(&cfg, full.vars(), path)?;
            for _ in 0..5 {
                opt.step(&full.grads()?)?;
            }
            let (w5, c5) = full.snapshot()?;

            // three steps, then "checkpoint": parameters and optimiser state through safetensors
            let first = Problem::new(DType::F32)?;
            let mut opt = make_optimizer(&cfg, first.vars(), path)?;
            for _ in 0..3 {
                opt.step(&first.grads()?)?;
            }
            let state = opt.state()?;
            let keys: Vec<&str> = state.keys().map(String::as_str).collect();
            match cfg.kind {
                OptimizerKind::Sgd => {
                    assert_eq!(keys, ["momentum.fc.bias", "momentum.fc.weight", "step"])
                }
                OptimizerKind::Adamw | OptimizerKind::Adam => assert_eq!(
                    keys,
                    [
                        "adam_m.fc.bias",
                        "adam_m.fc.weight",
                        "adam_step.fc.bias",
                        "adam_step.fc.weight",
                        "adam_v.fc.bias",
                        "adam_v.fc.weight",
                        "step"
                    ]
                ),
            }
            assert_eq!(state["step"].to_vec1::<i64>()?, vec![3]);
            let file = dir
                .path()
                .join(format!("{:?}-{path:?}.safetensors", cfg.kind));
            write_safetensors_atomic(&state, &file)?;
            let (w3, c3) = first.snapshot()?;
            // stepping the old optimiser further must not change the saved state
            opt.step(&first.grads()?)?;

            // resume: fresh parameters and a fresh optimiser
            let resumed = Problem::new(DType::F32)?;
            resumed.set(&w3, &c3)?;
            let mut opt = make_optimizer(&cfg, resumed.vars(), path)?;
            opt.load_state(&read_safetensors(&file, &Device::Cpu)?)?;
            for _ in 0..2 {
                opt.step(&resumed.grads()?)?;
            }
            let (w, c) = resumed.snapshot()?;
            assert_eq!(bits(&w), bits(&w5), "{:?} {path:?}: weight", cfg.kind);
            assert_eq!(bits(&c), bits(&c5), "{:?} {path:?}: bias", cfg.kind);
            assert_eq!(opt.state()?["step"].to_vec1::<i64>()?, vec![5]);
        }
    }
    Ok(())
}

#[test]
fn fused_state_loads_into_the_generic_path_and_back() -> Result<()> {
    for cfg in [sgd_cfg(), adamw_cfg()] {
        let full = Problem::new(DType::F32)?;
        let mut opt = make_optimizer(&cfg, full.vars(), Path::Fused)?;
        for _ in 0..4 {
            opt.step(&full.grads()?)?;
        }
        let (w4, c4) = full.snapshot()?;

        let a = Problem::new(DType::F32)?;
        let mut fused = make_optimizer(&cfg, a.vars(), Path::Fused)?;
        for _ in 0..2 {
            fused.step(&a.grads()?)?;
        }
        let (w2, c2) = a.snapshot()?;
        let b = Problem::new(DType::F32)?;
        b.set(&w2, &c2)?;
        let mut generic = make_optimizer(&cfg, b.vars(), Path::Generic)?;
        generic.load_state(&fused.state()?)?;
        generic.step(&b.grads()?)?;
        let (w3, c3) = b.snapshot()?;
        let c_ = Problem::new(DType::F32)?;
        c_.set(&w3, &c3)?;
        let mut fused2 = make_optimizer(&cfg, c_.vars(), Path::Fused)?;
        fused2.load_state(&generic.state()?)?;
        fused2.step(&c_.grads()?)?;
        let (w, c) = c_.snapshot()?;
        for (x, y) in w.iter().chain(&c).zip(w4.iter().chain(&c4)) {
            assert!((x - y).abs() < 1e-6, "{:?}: {x} vs {y}", cfg.kind);
        }
    }
    Ok(())
}

#[test]
fn load_state_rejects_foreign_or_broken_state() -> Result<()> {
    let p = Problem::new(DType::F32)?;
    let mut sgd = build_optimizer(&sgd_cfg(), p.vars())?;
    sgd.step(&p.grads()?)?;
    let sgd_state = sgd.state()?;
    let mut adamw = build_optimizer(&adamw_cfg(), p.vars())?;
    adamw.step(&p.grads()?)?;
    let adamw_state = adamw.state()?;

    let err = adamw.load_state(&sgd_state).unwrap_err().to_string();
    assert!(
        err.contains("momentum.fc.bias") && err.contains("AdamW"),
        "{err}"
    );
    let err = sgd.load_state(&adamw_state).unwrap_err().to_string();
    assert!(
        err.contains("adam_m.fc.bias") && err.contains("SGD"),
        "{err}"
    );

    let mut s = sgd_state.clone();
    s.remove("step");
    let err = sgd.load_state(&s).unwrap_err().to_string();
    assert!(err.contains("`step`"), "{err}");

    let mut s = sgd_state.clone();
    s.insert(
        "momentum.fc.weight".into(),
        Tensor::zeros((3, 2), DType::F32, &Device::Cpu)?,
    );
    let err = sgd.load_state(&s).unwrap_err().to_string();
    assert!(
        err.contains("momentum.fc.weight") && err.contains("[3, 2]"),
        "{err}"
    );

    let mut s = sgd_state.clone();
    s.insert(
        "momentum.fc2.weight".into(),
        Tensor::zeros((2, 3), DType::F32, &Device::Cpu)?,
    );
    let err = sgd.load_state(&s).unwrap_err().to_string();
    assert!(err.contains("no parameter `fc2.weight`"), "{err}");

    let mut s = adamw_state.clone();
    s.remove("adam_v.fc.weight");
    let err = adamw.load_state(&s).unwrap_err().to_string();
    assert!(
        err.contains("`fc.weight`") && err.contains("incomplete"),
        "{err}"
    );

    // a failed load leaves the optimiser as it was
    assert_eq!(adamw.state()?.len(), adamw_state.len());
    Ok(())
}

#[test]
fn variables_without_gradient_and_buffers_are_left_alone() -> Result<()> {
    for cfg in [sgd_cfg(), adamw_cfg()] {
        for path in [Path::Fused, Path::Generic] {
            let p = Problem::new(DType::F32)?;
            let unused = Var::new(&[1.0f32, 2.0], &Device::Cpu)?;
            let running = Var::new(&[0.5f32, 0.25], &Device::Cpu)?;
            let mut vars = p.vars();
            vars.push(("head.weight".into(), unused.clone()));
            vars.push(("bn.running_mean".into(), running.clone()));
            let mut opt = make_optimizer(&cfg, vars, path)?;
            for _ in 0..2 {
                let mut grads = p.grads()?;
                // a buffer with a gradient is still never optimised
                grads.insert(
                    running.as_tensor(),
                    Tensor::new(&[1.0f32, 1.0], &Device::Cpu)?,
                );
                opt.step(&grads)?;
            }
            assert_eq!(unused.as_tensor().to_vec1::<f32>()?, vec![1.0, 2.0]);
            assert_eq!(running.as_tensor().to_vec1::<f32>()?, vec![0.5, 0.25]);
            let state = opt.state()?;
            assert!(
                state
                    .keys()
                    .all(|k| !k.contains("head") && !k.contains("bn.")),
                "{:?}",
                state.keys()
            );
        }
    }
    Ok(())
}

/// An empty-ish gradient store (`GradStore::new` is private): only the gradient of an unrelated root.
fn empty_grads() -> Result<GradStore> {
    Ok(Tensor::zeros(1, DType::F32, &Device::Cpu)?.backward()?)
}

fn pseudo_random(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = Rng::new(seed);
    (0..n).map(|_| rng.normal() as f32).collect()
}

/// The fused kernels read strided gradients (transposed, permuted) in the parameter's element order, across
/// rayon chunk boundaries, exactly as their contiguous copies.
#[test]
fn fused_kernels_read_strided_gradients() -> Result<()> {
    let dev = Device::Cpu;
    // (parameter shape, gradient built as a permuted view of a tensor of shape `base` by `perm`)
    let cases: [(Vec<usize>, Vec<usize>, Vec<usize>); 3] = [
        (vec![300, 500], vec![500, 300], vec![1, 0]),
        (vec![4, 5, 6], vec![6, 4, 5], vec![1, 2, 0]),
        (vec![70, 33, 31], vec![31, 70, 33], vec![1, 2, 0]),
    ];
    for cfg in [sgd_cfg(), adamw_cfg()] {
        for (shape, base, perm) in &cases {
            let n: usize = shape.iter().product();
            let init = Tensor::from_vec(pseudo_random(n, 1), shape.as_slice(), &dev)?;
            let mut results = Vec::new();
            for mode in ["strided", "contiguous", "generic"] {
                let w = Var::from_tensor(&init)?;
                let vars = vec![("w".to_string(), w.clone())];
                let mut opt = make_optimizer(
                    &cfg,
                    vars,
                    if mode == "generic" {
                        Path::Generic
                    } else {
                        Path::Fused
                    },
                )?;
                for step in 0..3 {
                    let g = Tensor::from_vec(pseudo_random(n, 10 + step), base.as_slice(), &dev)?
                        .permute(perm.as_slice())?;
                    assert!(!g.is_contiguous());
                    let g = if mode == "contiguous" {
                        g.contiguous()?
                    } else {
                        g
                    };
                    let mut grads = empty_grads()?;
                    grads.insert(w.as_tensor(), g);
                    opt.step(&grads)?;
                }
                results.push(w.as_tensor().flatten_all()?.to_vec1::<f32>()?);
            }
            assert_eq!(results[0], results[1], "{:?} {shape:?}", cfg.kind);
            let max_diff = results[1]
                .iter()
                .zip(&results[2])
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                max_diff < 1e-5,
                "{:?} {shape:?}: fused vs generic {max_diff}",
                cfg.kind
            );
        }
    }
    Ok(())
}

#[test]
fn learning_rate_is_settable() -> Result<()> {
    let p = Problem::new(DType::F32)?;
    let mut opt = build_optimizer(&sgd_cfg(), p.vars())?;
    assert_eq!(opt.learning_rate(), 0.05);
    opt.set_learning_rate(0.0);
    assert_eq!(opt.learning_rate(), 0.0);
    // lr 0 with weight decay and momentum: parameters do not move
    let before = p.snapshot()?;
    opt.step(&p.grads()?)?;
    assert_eq!(p.snapshot()?, before);
    Ok(())
}

// ----------------------------------------------------------------------------------------------------------
// Gradient norm and clipping
// ----------------------------------------------------------------------------------------------------------

fn grad_vec(grads: &GradStore, v: &Var) -> Vec<f32> {
    grads
        .get(v.as_tensor())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

#[test]
fn clip_grad_norm_on_known_gradients() -> Result<()> {
    let dev = Device::Cpu;
    let a = Var::zeros((2,), DType::F32, &dev)?;
    let b = Var::zeros((3,), DType::F32, &dev)?;
    let m = Var::zeros((2, 2), DType::F32, &dev)?;
    let bn = Var::zeros((1,), DType::F32, &dev)?;
    let none = Var::zeros((1,), DType::F32, &dev)?;
    let vars = vec![
        ("a".to_string(), a.clone()),
        ("b".to_string(), b.clone()),
        ("m".to_string(), m.clone()),
        ("bn.running_var".to_string(), bn.clone()),
        ("none".to_string(), none.clone()),
    ];
    let make = || -> Result<GradStore> {
        let mut g = empty_grads()?;
        g.insert(a.as_tensor(), Tensor::new(&[3f32, 4.], &dev)?);
        // f64: norm through the generic (non-f32) path
        g.insert(
            b.as_tensor(),
            Tensor::new(&[0f64, 0., 12.], &dev)?.to_dtype(DType::F64)?,
        );
        // strided (transposed) gradient [[0, 0], [0, 0]] + 0: norm 0 contribution, but exercised
        g.insert(m.as_tensor(), Tensor::zeros((2, 2), DType::F32, &dev)?.t()?);
        // buffers are skipped
        g.insert(bn.as_tensor(), Tensor::new(&[100f32], &dev)?);
        Ok(g)
    };
    let g = make()?;
    assert!((grad_norm(&g, &vars)? - 13.0).abs() < 1e-12);

    // above max_norm: scaled by max_norm / (norm + 1e-6)
    let mut g = make()?;
    let norm = clip_grad_norm(&mut g, &vars, 6.5)?;
    assert!((norm - 13.0).abs() < 1e-12);
    let coef = 6.5 / (13.0 + 1e-6);
    let got = grad_vec(&g, &a);
    assert!((got[0] as f64 - 3.0 * coef).abs() < 1e-6 && (got[1] as f64 - 4.0 * coef).abs() < 1e-6);
    let got: Vec<f64> = g.get(b.as_tensor()).unwrap().to_vec1()?;
    assert!((got[2] - 12.0 * coef).abs() < 1e-9, "{got:?}");
    assert_eq!(grad_vec(&g, &bn), vec![100.0]);
    assert!((grad_norm(&g, &vars)? - 6.5).abs() < 1e-5);

    // below max_norm: untouched
    let mut g = make()?;
    assert!((clip_grad_norm(&mut g, &vars, 20.0)? - 13.0).abs() < 1e-12);
    assert_eq!(grad_vec(&g, &a), vec![3.0, 4.0]);

    // a strided gradient has the norm of its contiguous copy
    let mut g = empty_grads()?;
    let t = Tensor::new(&[[1f32, 2.], [3., 4.]], &dev)?;
    g.insert(m.as_tensor(), t.t()?);
    assert!((grad_norm(&g, &vars)? - 30f64.sqrt()).abs() < 1e-12);

    // a non-finite norm is reported and leaves the gradients alone
    let mut g = empty_grads()?;
    g.insert(a.as_tensor(), Tensor::new(&[f32::NAN, 1.0], &dev)?);
    assert!(clip_grad_norm(&mut g, &vars, 1.0)?.is_nan());
    assert_eq!(grad_vec(&g, &a)[1], 1.0);

    assert!(clip_grad_norm(&mut make()?, &vars, 0.0).is_err());
    assert!(clip_grad_norm(&mut make()?, &vars, f64::NAN).is_err());
    Ok(())
}

#[test]
fn grad_norm_of_a_large_gradient_is_exact() -> Result<()> {
    // more than one rayon chunk
    let n = 200_003;
    let v = Var::zeros((n,), DType::F32, &Device::Cpu)?;
    let vals = pseudo_random(n, 3);
    let want: f64 = vals
        .iter()
        .map(|&x| (x as f64) * (x as f64))
        .sum::<f64>()
        .sqrt();
    let mut g = empty_grads()?;
    g.insert(v.as_tensor(), Tensor::from_vec(vals, (n,), &Device::Cpu)?);
    let got = grad_norm(&g, &[("v".into(), v)])?;
    assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
    Ok(())
}

// ----------------------------------------------------------------------------------------------------------
// Schedules
// ----------------------------------------------------------------------------------------------------------

fn schedule(kind: ScheduleKind) -> ScheduleConfig {
    ScheduleConfig {
        kind,
        ..ScheduleConfig::default()
    }
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-12
}

#[test]
fn schedule_values() -> Result<()> {
    let base = 0.1;
    // constant with warm-up
    let s = ScheduleConfig {
        warmup_epochs: 2.0,
        ..schedule(ScheduleKind::Constant)
    };
    s.validate()?;
    assert!(close(s.lr_at(base, 0.0, 10), 0.0));
    assert!(close(s.lr_at(base, 0.5, 10), 0.025));
    assert!(close(s.lr_at(base, 1.0, 10), 0.05));
    assert!(close(s.lr_at(base, 2.0, 10), base));
    assert!(close(s.lr_at(base, 9.9, 10), base));

    // cosine, no warm-up: peak, midpoint (base + min)/2, floor
    let s = ScheduleConfig {
        min_lr: 0.001,
        ..schedule(ScheduleKind::Cosine)
    };
    s.validate()?;
    assert!(close(s.lr_at(base, 0.0, 10), base));
    assert!(close(s.lr_at(base, 5.0, 10), (base + 0.001) / 2.0));
    assert!(close(s.lr_at(base, 10.0, 10), 0.001));
    assert!(close(s.lr_at(base, 12.0, 10), 0.001));
    // cos(π/4) point
    let quarter = 0.001 + (base - 0.001) * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2);
    assert!(close(s.lr_at(base, 2.5, 10), quarter));

    // cosine after a 2-epoch warm-up decays over the remaining 8 epochs: midpoint at epoch 6
    let s = ScheduleConfig {
        warmup_epochs: 2.0,
        min_lr: 0.0,
        ..schedule(ScheduleKind::Cosine)
    };
    assert!(close(s.lr_at(base, 1.0, 10), 0.05));
    assert!(close(s.lr_at(base, 2.0, 10), base));
    assert!(close(s.lr_at(base, 6.0, 10), base / 2.0));
    assert!(close(s.lr_at(base, 10.0, 10), 0.0));

    // linear to min_lr
    let s = ScheduleConfig {
        min_lr: 0.02,
        ..schedule(ScheduleKind::Linear)
    };
    assert!(close(s.lr_at(base, 0.0, 4), base));
    assert!(close(s.lr_at(base, 1.0, 4), 0.08));
    assert!(close(s.lr_at(base, 2.0, 4), 0.06));
    assert!(close(s.lr_at(base, 4.0, 4), 0.02));

    // step at milestones
    let s = ScheduleConfig {
        milestones: Some(vec![3, 6]),
        gamma: Some(0.5),
        ..schedule(ScheduleKind::Step)
    };
    s.validate()?;
    assert!(close(s.lr_at(base, 0.0, 10), base));
    assert!(close(s.lr_at(base, 2.99, 10), base));
    assert!(close(s.lr_at(base, 3.0, 10), 0.05));
    // step fractions accumulated in floating point just short of the milestone count as reaching it
    assert!(close(s.lr_at(base, 2.9999999999, 10), 0.05));
    assert!(close(s.lr_at(base, 5.5, 10), 0.05));
    assert!(close(s.lr_at(base, 6.0, 10), 0.025));
    assert!(close(s.lr_at(base, 9.9, 10), 0.025));

    // step every 2 epochs, default gamma 0.1
    let s = ScheduleConfig {
        step_size: Some(2),
        ..schedule(ScheduleKind::Step)
    };
    s.validate()?;
    assert!(close(s.lr_at(base, 1.9, 10), base));
    assert!(close(s.lr_at(base, 2.0, 10), 0.01));
    assert!(close(s.lr_at(base, 4.5, 10), 0.001));

    // warm-up longer than the run: pure warm-up
    let s = ScheduleConfig {
        warmup_epochs: 5.0,
        ..schedule(ScheduleKind::Cosine)
    };
    assert!(close(s.lr_at(base, 2.5, 2), 0.05));
    Ok(())
}

#[test]
fn schedule_parses_from_a_recipe() {
    let s: ScheduleConfig =
        toml::from_str("kind = \"cosine\"\nwarmup_epochs = 1\nmin_lr = 1e-4").unwrap();
    assert_eq!(s.kind, ScheduleKind::Cosine);
    assert_eq!(s.warmup_epochs, 1.0);
    s.validate().unwrap();
    assert!(toml::from_str::<ScheduleConfig>("kind = \"cosine\"\nwarmup = 1").is_err());
}

fn config_msg(r: Result<()>) -> (String, String) {
    match r {
        Err(Error::Config { path, msg }) => (path, msg),
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn schedule_validation_names_the_field() {
    let bad = [
        (
            ScheduleConfig {
                warmup_epochs: -1.0,
                ..schedule(ScheduleKind::Constant)
            },
            "schedule.warmup_epochs must be >= 0, got -1",
        ),
        (
            ScheduleConfig {
                min_lr: -0.5,
                ..schedule(ScheduleKind::Cosine)
            },
            "schedule.min_lr must be >= 0, got -0.5",
        ),
        (
            schedule(ScheduleKind::Step),
            "schedule.kind = \"step\" needs schedule.step_size or schedule.milestones",
        ),
        (
            ScheduleConfig {
                step_size: Some(0),
                ..schedule(ScheduleKind::Step)
            },
            "schedule.step_size must be > 0, got 0",
        ),
        (
            ScheduleConfig {
                milestones: Some(vec![5, 3]),
                ..schedule(ScheduleKind::Step)
            },
            "schedule.milestones must be strictly increasing, got [5, 3]",
        ),
        (
            ScheduleConfig {
                step_size: Some(2),
                gamma: Some(0.0),
                ..schedule(ScheduleKind::Step)
            },
            "schedule.gamma must be > 0, got 0",
        ),
        (
            ScheduleConfig {
                milestones: Some(vec![3]),
                ..schedule(ScheduleKind::Cosine)
            },
            "schedule.milestones is only used by kind = \"step\"",
        ),
    ];
    for (cfg, want) in bad {
        let (path, msg) = config_msg(cfg.validate());
        assert_eq!(path, "schedule");
        assert_eq!(msg, want);
    }
}

#[test]
fn optimizer_validation_names_the_field() {
    let sgd = OptimizerConfig {
        momentum: 0.0,
        nesterov: false,
        weight_decay: None,
        ..sgd_cfg()
    };
    let adamw = OptimizerConfig {
        weight_decay: None,
        betas: None,
        eps: None,
        decay_only: None,
        ..adamw_cfg()
    };
    sgd.validate().unwrap();
    adamw.validate().unwrap();
    sgd_cfg().validate().unwrap();
    adamw_cfg().validate().unwrap();
    let bad = [
        (
            OptimizerConfig {
                lr: -1.0,
                ..sgd.clone()
            },
            "optimizer.lr must be > 0, got -1",
        ),
        (
            OptimizerConfig {
                lr: 0.0,
                ..adamw.clone()
            },
            "optimizer.lr must be > 0, got 0",
        ),
        (
            OptimizerConfig {
                lr: f64::NAN,
                ..sgd.clone()
            },
            "optimizer.lr must be > 0, got NaN",
        ),
        (
            OptimizerConfig {
                momentum: 1.0,
                ..sgd.clone()
            },
            "optimizer.momentum must be in [0, 1), got 1",
        ),
        (
            OptimizerConfig {
                momentum: -0.1,
                ..sgd.clone()
            },
            "optimizer.momentum must be in [0, 1), got -0.1",
        ),
        (
            OptimizerConfig {
                nesterov: true,
                ..sgd.clone()
            },
            "optimizer.nesterov requires kind = \"sgd\" with momentum > 0 (kind is \"sgd\", momentum 0)",
        ),
        (
            OptimizerConfig {
                nesterov: true,
                ..adamw.clone()
            },
            "optimizer.nesterov requires kind = \"sgd\" with momentum > 0 (kind is \"adamw\", momentum 0)",
        ),
        (
            OptimizerConfig {
                momentum: 0.9,
                ..adamw.clone()
            },
            "optimizer.momentum is only used by kind = \"sgd\" (kind is \"adamw\"; AdamW uses betas)",
        ),
        (
            OptimizerConfig {
                weight_decay: Some(-0.1),
                ..sgd.clone()
            },
            "optimizer.weight_decay must be >= 0, got -0.1",
        ),
        (
            OptimizerConfig {
                betas: Some([0.9, 1.0]),
                ..adamw.clone()
            },
            "optimizer.betas[1] must be in [0, 1), got 1",
        ),
        (
            OptimizerConfig {
                betas: Some([0.9, 0.99]),
                ..sgd.clone()
            },
            "optimizer.betas is only used by kind = \"adamw\" or \"adam\" (kind is \"sgd\")",
        ),
        (
            OptimizerConfig {
                eps: Some(0.0),
                ..adamw.clone()
            },
            "optimizer.eps must be > 0, got 0",
        ),
        (
            OptimizerConfig {
                eps: Some(1e-8),
                ..sgd.clone()
            },
            "optimizer.eps is only used by kind = \"adamw\" or \"adam\" (kind is \"sgd\")",
        ),
    ];
    for (cfg, want) in bad {
        let (path, msg) = config_msg(cfg.validate());
        assert_eq!(path, "optimizer");
        assert_eq!(msg, want);
        // build_optimizer validates too
        let err = build_optimizer(&cfg, vec![])
            .err()
            .expect("invalid config builds");
        assert!(err.to_string().contains(want), "{err}");
    }
}

#[test]
fn a_gradient_sharing_the_parameter_storage_is_read_before_the_write() -> Result<()> {
    for path in [Path::Fused, Path::Generic] {
        let w = Var::new(&[1.0f32, -2.0, 4.0], &Device::Cpu)?;
        let cfg = OptimizerConfig {
            momentum: 0.0,
            nesterov: false,
            weight_decay: None,
            lr: 0.25,
            ..sgd_cfg()
        };
        let mut opt = make_optimizer(&cfg, vec![("w".into(), w.clone())], path)?;
        let mut grads = empty_grads()?;
        // a hand-made store whose gradient *is* the parameter: w -= 0.25·w
        grads.insert(w.as_tensor(), w.as_tensor().clone());
        opt.step(&grads)?;
        assert_eq!(
            w.as_tensor().to_vec1::<f32>()?,
            vec![0.75, -1.5, 3.0],
            "{path:?}"
        );
    }
    Ok(())
}

#[test]
fn trainable_vars_skips_buffers_and_sorts() -> Result<()> {
    let varmap = candle_nn::VarMap::new();
    {
        let mut data = varmap.data().lock().unwrap();
        for name in [
            "fc.weight",
            "bn.running_mean",
            "bn.weight",
            "bn.running_var",
            "a.bias",
        ] {
            data.insert(name.to_string(), Var::zeros(2, DType::F32, &Device::Cpu)?);
        }
    }
    let names: Vec<String> = distill_nn::optim::trainable_vars(&varmap)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["a.bias", "bn.weight", "fc.weight"]);
    Ok(())
}
