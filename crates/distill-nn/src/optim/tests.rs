use super::*;
use candle_core::Device;

fn var(v: &[f32]) -> Var {
    Var::new(v, &Device::Cpu).unwrap()
}

fn cfg(kind: OptimizerKind, wd: f64, only: Option<&[&str]>) -> OptimizerConfig {
    OptimizerConfig {
        kind,
        lr: 0.05,
        momentum: 0.0,
        nesterov: false,
        weight_decay: Some(wd),
        betas: None,
        eps: None,
        decay_only: only.map(|o| o.iter().map(|s| s.to_string()).collect()),
    }
}

/// `(a, b)` after 5 steps of loss `Σ(a·x)² + Σ(b·x)²` with `opt`, adding `extra_l2·a` to `a`'s gradient
/// by hand when given.
fn run(opt_cfg: &OptimizerConfig, extra_l2: f64) -> (Vec<f32>, Vec<f32>) {
    let (a, b) = (var(&[1.0, -2.0, 0.5]), var(&[0.3, 0.7, -1.1]));
    // the last input is 0: without decay, the last weights get no gradient and stay put
    let x = Tensor::new(&[0.5f32, 1.5, 0.0], &Device::Cpu).unwrap();
    let vars = vec![
        ("model.layers.0.weight".to_string(), a.clone()),
        ("model.layers.1.weight".to_string(), b.clone()),
    ];
    let mut opt = build_optimizer(opt_cfg, vars).unwrap();
    for _ in 0..5 {
        let loss = (a
            .as_tensor()
            .mul(&x)
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap()
            + b.as_tensor()
                .mul(&x)
                .unwrap()
                .sqr()
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        let mut g = loss.backward().unwrap();
        if extra_l2 != 0.0 {
            let ga = g.get(a.as_tensor()).unwrap().clone();
            let ga = (ga + a.as_tensor().affine(extra_l2, 0.0).unwrap()).unwrap();
            g.insert(a.as_tensor(), ga);
        }
        opt.step(&g).unwrap();
    }
    (
        a.as_tensor().to_vec1().unwrap(),
        b.as_tensor().to_vec1().unwrap(),
    )
}

fn close(x: &[f32], y: &[f32]) {
    for (p, q) in x.iter().zip(y) {
        assert!((p - q).abs() < 1e-6, "{x:?} vs {y:?}");
    }
}

/// Adam's coupled L2 on the selected parameter equals AdamW without decay fed `g + wd·w` by hand; the
/// unselected parameter trains as if there were no decay at all.
#[test]
fn adam_l2_on_selected_parameters_equals_the_gradient_term_by_hand() {
    let wd = 0.3;
    let ours = run(&cfg(OptimizerKind::Adam, wd, Some(&["layers.0"])), 0.0);
    let by_hand = run(&cfg(OptimizerKind::Adamw, 0.0, None), wd);
    close(&ours.0, &by_hand.0);
    close(&ours.1, &by_hand.1);
    // the decay moved the selected parameter's weight that has no data gradient, and only that one
    let none = run(&cfg(OptimizerKind::Adamw, 0.0, None), 0.0);
    assert_eq!((none.0[2], none.1[2]), (0.5, -1.1));
    assert!((ours.0[2] - 0.5).abs() > 0.1, "{ours:?}");
    assert_eq!(ours.1[2], -1.1);
    // SGD: the same selection
    let sgd = run(
        &cfg(OptimizerKind::Sgd, wd, Some(&["layers.0.weight"])),
        0.0,
    );
    let sgd_hand = run(&cfg(OptimizerKind::Sgd, 0.0, None), wd);
    close(&sgd.0, &sgd_hand.0);
    close(&sgd.1, &sgd_hand.1);
}

#[test]
fn decay_only_selects_names_and_module_prefixes() {
    let pats = vec!["layers.0".to_string(), "fc.weight".to_string()];
    assert!(selected("model.layers.0.weight", &pats));
    assert!(selected("layers.0.bias", &pats));
    assert!(!selected("model.layers.01.weight", &pats));
    assert!(selected("model.fc.weight", &pats));
    assert!(!selected("model.fc.bias", &pats));
    let mut bad = cfg(OptimizerKind::Adam, 0.1, Some(&[]));
    assert!(bad
        .validate()
        .unwrap_err()
        .to_string()
        .contains("decay_only"));
    bad.decay_only = None;
    bad.validate().unwrap();
}
