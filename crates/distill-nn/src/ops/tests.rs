use super::*;
use candle_core::{Device, Var};

fn close(a: &Tensor, b: &Tensor, tol: f32) {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(&b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}

/// The fused linear (with and without bias and ReLU, input tracked or not, rank 3) equals candle's
/// matmul + add + relu, values and every gradient.
#[test]
fn fused_linear_matches_the_composed_ops_values_and_gradients() -> Result<()> {
    let dev = Device::Cpu;
    // the last case's weight is a transposed (non-contiguous) view: the op's general path
    for (relu, bias, track_x, rank3, strided_w) in [
        (false, false, false, false, false),
        (true, true, true, false, false),
        (true, true, false, false, false),
        (false, true, true, true, false),
        (true, true, true, false, true),
    ] {
        let xs = Tensor::randn(0f32, 1.0, (6, 5), &dev)?;
        let xs = if rank3 { xs.reshape((2, 3, 5))? } else { xs };
        let xv = Var::from_tensor(&xs)?;
        let x = if track_x {
            xv.as_tensor().clone()
        } else {
            xs.clone()
        };
        let w = if strided_w {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (5, 4), &dev)?)?
        } else {
            Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 5), &dev)?)?
        };
        let wt = if strided_w {
            w.as_tensor().t()?
        } else {
            w.as_tensor().clone()
        };
        let b = Var::from_tensor(&Tensor::randn(0f32, 1.0, 4, &dev)?)?;
        let bias_t = bias.then(|| b.as_tensor());
        let fused = linear(&x, &wt, bias_t, relu)?;
        let mut plain = x.broadcast_matmul(&wt.t()?)?;
        if bias {
            plain = plain.broadcast_add(b.as_tensor())?;
        }
        if relu {
            plain = plain.relu()?;
        }
        close(&fused, &plain, 1e-5);
        // a loss that weighs every output differently
        let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        close(gf.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-5);
        if bias {
            close(gf.get(&b).unwrap(), gp.get(&b).unwrap(), 1e-5);
        } else {
            assert!(gf.get(&b).is_none());
        }
        if track_x {
            close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-5);
        } else {
            assert!(gf.get(&xv).is_none());
        }
    }
    Ok(())
}

/// Few rows (1, a sentence's 20 or 64 tokens) and more: the fused linear splits the output columns of up to
/// 64 rows between the pool's threads (100 outputs: blocks that are not a multiple of the vector width),
/// with a contiguous and with a transposed weight; every row equals the composed ops.
#[test]
fn fused_linear_on_few_rows_splits_columns_and_matches() -> Result<()> {
    let dev = Device::Cpu;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for m in [1, 7, 8, 20, 64, 65] {
        for strided_w in [false, true] {
            let x = Tensor::randn(0f32, 1.0, (m, 33), &dev)?;
            let w = if strided_w {
                Tensor::randn(0f32, 1.0, (33, 100), &dev)?.t()?
            } else {
                Tensor::randn(0f32, 1.0, (100, 33), &dev)?
            };
            let b = Tensor::randn(0f32, 1.0, 100, &dev)?;
            let fused = pool.install(|| linear(&x, &w, Some(&b), true))?;
            let plain = x.matmul(&w.t()?)?.broadcast_add(&b)?.relu()?;
            assert_eq!(fused.dims(), &[m, 100]);
            close(&fused, &plain, 1e-5);
        }
    }
    Ok(())
}

#[test]
fn linear_shape_errors_name_both_shapes() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::zeros((2, 3), DType::F32, &dev)?;
    let w = Tensor::zeros((4, 5), DType::F32, &dev)?;
    let e = linear(&x, &w, None, false).unwrap_err().to_string();
    assert!(e.contains("[2, 3]") && e.contains("[4, 5]"), "{e}");
    let w = Tensor::zeros((4, 3), DType::F32, &dev)?;
    let b = Tensor::zeros(5, DType::F32, &dev)?;
    let e = linear(&x, &w, Some(&b), false).unwrap_err().to_string();
    assert!(e.contains("bias [5]"), "{e}");
    Ok(())
}

/// Cross-entropy and KD against values computed by hand in f64 from the definitions, and their
/// gradients against the closed forms.
#[test]
fn fused_losses_equal_their_definitions() -> Result<()> {
    let dev = Device::Cpu;
    let s = [[1.0f32, -2.0, 0.5], [0.0, 3.0, -1.0]];
    let t = [[2.0f32, 0.0, -1.0], [-0.5, 1.0, 1.5]];
    let ids = [2u32, 1];
    let sv = Var::new(&s, &dev)?;
    let tt = Tensor::new(&t, &dev)?;
    let idt = Tensor::new(&ids, &dev)?;
    let sm = |r: &[f32], temp: f64| -> Vec<f64> {
        let e: Vec<f64> = r.iter().map(|&v| (v as f64 / temp).exp()).collect();
        let z: f64 = e.iter().sum();
        e.iter().map(|v| v / z).collect()
    };
    // cross-entropy
    let ce = cross_entropy(sv.as_tensor(), &idt)?.unwrap();
    let want: f64 = (0..2)
        .map(|i| -sm(&s[i], 1.0)[ids[i] as usize].ln())
        .sum::<f64>()
        / 2.0;
    assert!((ce.to_scalar::<f32>()? as f64 - want).abs() < 1e-6);
    let g = ce.backward()?;
    let g: Vec<Vec<f32>> = g.get(&sv).unwrap().to_vec2()?;
    for i in 0..2 {
        let p = sm(&s[i], 1.0);
        for j in 0..3 {
            let want = (p[j] - (j == ids[i] as usize) as u8 as f64) / 2.0;
            assert!((g[i][j] as f64 - want).abs() < 1e-6);
        }
    }
    // KD at T = 3
    let temp = 3.0;
    let kd = kd_kl(sv.as_tensor(), &tt, temp)?.unwrap();
    let mut want = 0.0;
    for i in 0..2 {
        let (p, q) = (sm(&t[i], temp), sm(&s[i], temp));
        want += (0..3).map(|j| p[j] * (p[j] / q[j]).ln()).sum::<f64>();
    }
    want *= temp * temp / 2.0;
    assert!(
        (kd.to_scalar::<f32>()? as f64 - want).abs() < 1e-5,
        "{want}"
    );
    let g: Vec<Vec<f32>> = kd.backward()?.get(&sv).unwrap().to_vec2()?;
    for i in 0..2 {
        let (p, q) = (sm(&t[i], temp), sm(&s[i], temp));
        for j in 0..3 {
            let want = temp * (q[j] - p[j]) / 2.0;
            assert!((g[i][j] as f64 - want).abs() < 1e-6);
        }
    }
    // a teacher that needs gradients takes the composed path
    let tv = Var::new(&t, &dev)?;
    assert!(kd_kl(sv.as_tensor(), tv.as_tensor(), temp)?.is_none());
    Ok(())
}

/// The fused LayerNorm and softmax equal the composed ops: values and gradients of every argument.
#[test]
fn fused_layer_norm_and_softmax_match_the_composed_ops() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 70, 9), &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(1f32, 0.5, 9, &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 9, &dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (3, 70, 9), &dev)?;
    let fused = layer_norm(x.as_tensor(), w.as_tensor(), b.as_tensor(), 1e-5)?;
    let d = candle_core::D::Minus1;
    let xt = x.as_tensor();
    let mean = xt.mean_keepdim(d)?;
    let xc = xt.broadcast_sub(&mean)?;
    let var = xc.sqr()?.mean_keepdim(d)?;
    let plain = xc
        .broadcast_div(&(var + 1e-5)?.sqrt()?)?
        .broadcast_mul(w.as_tensor())?
        .broadcast_add(b.as_tensor())?;
    close(&fused, &plain, 1e-5);
    let gf = (&fused * &r)?.sum_all()?.backward()?;
    let gp = (&plain * &r)?.sum_all()?.backward()?;
    for v in [&x, &w, &b] {
        close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
    }
    let fused = softmax_last(x.as_tensor())?;
    let m = xt.max_keepdim(d)?.detach();
    let e = xt.broadcast_sub(&m)?.exp()?;
    let plain = e.broadcast_div(&e.sum_keepdim(d)?)?;
    close(&fused, &plain, 1e-6);
    let gf = (&fused * &r)?.sum_all()?.backward()?;
    let gp = (&plain * &r)?.sum_all()?.backward()?;
    close(gf.get(&x).unwrap(), gp.get(&x).unwrap(), 1e-5);
    Ok(())
}

/// The fused training-mode batch norm (with and without ReLU, input tracked or not) equals candle-nn's
/// `BatchNorm::forward_t` on values, on the input's, scale's and shift's gradients and on the running
/// statistics after two steps; evaluation mode (running statistics) matches it on values and gradients.
#[test]
fn fused_batch_norm_matches_candle_nn() -> Result<()> {
    use candle_nn::{BatchNorm, ModuleT};
    let dev = Device::Cpu;
    for (relu, track_x, dims) in [
        (false, true, vec![4, 3, 5, 6]),
        (true, true, vec![2, 3, 7, 1]),
        (true, false, vec![5, 3]),
    ] {
        let gamma = Var::from_tensor(&Tensor::randn(1f32, 0.5, 3, &dev)?)?;
        let beta = Var::from_tensor(&Tensor::randn(0f32, 0.5, 3, &dev)?)?;
        let make = || -> Result<BatchNorm> {
            Ok(BatchNorm::new_with_momentum(
                3,
                Tensor::new(&[0.1f32, -0.2, 0.3], &dev)?,
                Tensor::new(&[1.0f32, 2.0, 0.5], &dev)?,
                gamma.as_tensor().clone(),
                beta.as_tensor().clone(),
                1e-5,
                0.2,
            )?)
        };
        let (fused_bn, plain_bn) = (make()?, make()?);
        for step in 0..2 {
            let xs = (Tensor::randn(0f32, 2.0, dims.as_slice(), &dev)? + step as f64)?;
            let xv = Var::from_tensor(&xs)?;
            let x = if track_x {
                xv.as_tensor().clone()
            } else {
                xs.clone()
            };
            let fused = batch_norm(&fused_bn, &x, true, relu)?;
            let mut plain = plain_bn.forward_t(&x, true)?;
            if relu {
                plain = plain.relu()?;
            }
            close(&fused, &plain, 1e-4);
            let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
            let gf = backward(&(&fused * &r)?.sum_all()?)?;
            let gp = (&plain * &r)?.sum_all()?.backward()?;
            close(gf.get(&gamma).unwrap(), gp.get(&gamma).unwrap(), 1e-3);
            close(gf.get(&beta).unwrap(), gp.get(&beta).unwrap(), 1e-4);
            if track_x {
                close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-3);
            } else {
                assert!(gf.get(&xv).is_none());
            }
            close(fused_bn.running_mean(), plain_bn.running_mean(), 1e-5);
            close(fused_bn.running_var(), plain_bn.running_var(), 1e-5);
        }
        let xv = Var::from_tensor(&Tensor::randn(0f32, 1.0, dims.as_slice(), &dev)?)?;
        let x = xv.as_tensor();
        let plain = plain_bn.forward_t(x, false)?;
        let plain = if relu { plain.relu()? } else { plain };
        let fused = batch_norm(&fused_bn, x, false, relu)?;
        close(&fused, &plain, 1e-5);
        let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
        let gf = backward(&(&fused * &r)?.sum_all()?)?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        for v in [&gamma, &beta, &xv] {
            close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-4);
        }
    }
    let bn = candle_nn::batch_norm(
        4,
        candle_nn::BatchNormConfig::default(),
        candle_nn::VarBuilder::zeros(DType::F32, &dev),
    )?;
    let err = batch_norm(
        &bn,
        &Tensor::zeros((2, 3, 2, 2), DType::F32, &dev)?,
        true,
        false,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4 channels"), "{err}");
    Ok(())
}

/// The convolution's backward pass sums its images' kernel gradients in a fixed order: repeated on the
/// same batch it gives bit-identical gradients however rayon schedules the images.
#[test]
fn conv2d_gradients_are_bitwise_reproducible() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (37, 3, 9, 9), &dev)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (8, 3, 3, 3), &dev)?)?;
    let r = Tensor::randn(0f32, 1.0, (37, 8, 9, 9), &dev)?;
    let grad = || -> Result<Vec<f32>> {
        let y = conv2d_relu(&x, w.as_tensor(), None, 1, 1)?;
        let g = (&y * &r)?.sum_all()?.backward()?;
        Ok(g.get(&w).unwrap().flatten_all()?.to_vec1()?)
    };
    let first = grad()?;
    for _ in 0..20 {
        let again = grad()?;
        assert!(
            first
                .iter()
                .zip(&again)
                .all(|(a, b)| a.to_bits() == b.to_bits()),
            "kernel gradient changed between identical passes"
        );
    }
    Ok(())
}

/// The fused depthwise convolution equals candle's grouped conv2d (`groups = C`) on values, and the
/// composed shifted-slice version on the weight's and the input's gradients, for strides, asymmetric
/// padding, a 5x3 kernel and an untracked input; through [`backward`] as through `loss.backward()`.
#[test]
fn fused_depthwise_conv2d_matches_grouped_conv_values_and_gradients() -> Result<()> {
    let dev = Device::Cpu;
    for (k, padding, stride, track_x) in [
        ((3, 3), (1, 1), (1, 1), true),
        ((3, 3), (1, 1), (2, 2), true),
        ((5, 3), (2, 0), (1, 2), false),
        ((3, 3), (0, 0), (1, 1), true),
    ] {
        let xs = Tensor::randn(0f32, 1.0, (3, 4, 9, 8), &dev)?;
        let xv = Var::from_tensor(&xs)?;
        let x = if track_x {
            xv.as_tensor().clone()
        } else {
            xs.clone()
        };
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (4, 1, k.0, k.1), &dev)?)?;
        let fused = depthwise_conv2d(&x, w.as_tensor(), padding, stride)?;
        let composed = depthwise_conv2d_composed(&x, w.as_tensor(), padding, stride)?;
        if padding.0 == padding.1 && stride.0 == stride.1 {
            let grouped = xs.conv2d(w.as_tensor(), padding.0, stride.0, 1, 4)?;
            assert_eq!(fused.dims(), grouped.dims());
            close(&fused, &grouped, 1e-5);
        }
        assert_eq!(fused.dims(), composed.dims());
        close(&fused, &composed, 1e-5);
        let r = Tensor::randn(0f32, 1.0, fused.dims(), &dev)?;
        let gf = backward(&(&fused * &r)?.sum_all()?)?;
        let gc = (&composed * &r)?.sum_all()?.backward()?;
        close(gf.get(&w).unwrap(), gc.get(&w).unwrap(), 1e-4);
        if track_x {
            close(gf.get(&xv).unwrap(), gc.get(&xv).unwrap(), 1e-4);
        } else {
            assert!(gf.get(&xv).is_none());
        }
    }
    let x = Tensor::zeros((1, 3, 4, 4), DType::F32, &dev)?;
    let w = Tensor::zeros((2, 1, 3, 3), DType::F32, &dev)?;
    assert!(depthwise_conv2d(&x, &w, (1, 1), (1, 1)).is_err());
    Ok(())
}

/// The im2col convolution (strides, padding, bias, input tracked or not) equals candle's conv2d, values
/// and gradients; max-pooling equals candle's on values and on gradients (no ties in random data).
#[test]
fn fused_conv2d_and_max_pool_match_candle() -> Result<()> {
    let dev = Device::Cpu;
    for (stride, padding, bias, track_x, relu) in [
        (1, 0, true, false, false),
        (2, 1, false, true, false),
        (1, 1, true, true, true),
        (2, 0, true, true, true),
    ] {
        // odd sizes: candle's own conv backward (the reference) mis-sizes stride-2 gradients of even widths
        let xs = Tensor::randn(0f32, 1.0, (3, 4, 9, 7), &dev)?;
        let xv = Var::from_tensor(&xs)?;
        let x = if track_x {
            xv.as_tensor().clone()
        } else {
            xs.clone()
        };
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 4, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 5, &dev)?)?;
        let bt = bias.then(|| b.as_tensor());
        let fused = if relu {
            conv2d_relu(&x, w.as_tensor(), bt, stride, padding)?
        } else {
            conv2d(&x, w.as_tensor(), bt, stride, padding)?
        };
        let mut plain = x.conv2d(w.as_tensor(), padding, stride, 1, 1)?;
        if bias {
            plain = plain.broadcast_add(&b.as_tensor().reshape((1, 5, 1, 1))?)?;
        }
        if relu {
            plain = plain.relu()?;
        }
        assert_eq!(fused.dims(), plain.dims());
        close(&fused, &plain, 1e-4);
        let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
        let gf = (&fused * &r)?.sum_all()?.backward()?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        close(gf.get(&w).unwrap(), gp.get(&w).unwrap(), 1e-4);
        if bias {
            close(gf.get(&b).unwrap(), gp.get(&b).unwrap(), 1e-4);
        }
        if track_x {
            close(gf.get(&xv).unwrap(), gp.get(&xv).unwrap(), 1e-4);
        } else {
            assert!(gf.get(&xv).is_none());
        }
    }
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 7, 6), &dev)?)?;
    let fused = max_pool2d(x.as_tensor(), 2)?;
    let plain = x.as_tensor().max_pool2d(2)?;
    assert_eq!(fused.dims(), [2, 3, 3, 3]);
    close(&fused, &plain, 0.0);
    // The gradient: each window's weight lands on its maximum, whole (as in PyTorch). candle 0.11.1's own
    // max-pool backward scales it by (number of maxima / k²), i.e. by 1/4 here, so the reference is
    // computed by hand.
    let r = Tensor::randn(0f32, 1.0, (2, 3, 3, 3), &dev)?;
    let gf = (&fused * &r)?.sum_all()?.backward()?;
    let xs: Vec<f32> = x.as_tensor().flatten_all()?.to_vec1()?;
    let rs: Vec<f32> = r.flatten_all()?.to_vec1()?;
    let mut want = vec![0f32; xs.len()];
    for plane in 0..6 {
        for oy in 0..3 {
            for ox in 0..3 {
                let cells = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .map(|(dy, dx)| plane * 42 + (2 * oy + dy) * 6 + 2 * ox + dx);
                let best = cells
                    .into_iter()
                    .max_by(|&a, &b| xs[a].total_cmp(&xs[b]))
                    .unwrap();
                want[best] += rs[plane * 9 + oy * 3 + ox];
            }
        }
    }
    close(
        gf.get(&x).unwrap(),
        &Tensor::from_vec(want, (2, 3, 7, 6), &dev)?,
        0.0,
    );
    let e = conv2d(
        x.as_tensor(),
        &Tensor::zeros((4, 2, 3, 3), DType::F32, &dev)?,
        None,
        1,
        0,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("[2, 3, 7, 6]") && e.contains("[4, 2, 3, 3]"),
        "{e}"
    );
    Ok(())
}

/// `ops::backward` gives the same gradients as `loss.backward()` through every fused op, including a
/// weight used twice (its direct gradients and candle's are summed) and a frozen (non-variable) weight.
#[test]
fn direct_backward_equals_plain_backward() -> Result<()> {
    let dev = Device::Cpu;
    let x = Tensor::randn(0f32, 1.0, (4, 2, 5, 5), &dev)?;
    let k = Var::from_tensor(&Tensor::randn(0f32, 0.3, (3, 2, 3, 3), &dev)?)?;
    let kb = Var::from_tensor(&Tensor::randn(0f32, 0.3, 3, &dev)?)?;
    let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (12, 12), &dev)?)?;
    let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 12, &dev)?)?;
    let frozen = Tensor::randn(0f32, 0.3, (6, 12), &dev)?;
    let ln_w = Var::from_tensor(&Tensor::ones(6, DType::F32, &dev)?)?;
    let ln_b = Var::from_tensor(&Tensor::zeros(6, DType::F32, &dev)?)?;
    let ids = Tensor::new(&[0u32, 5, 2, 3], &dev)?;
    let loss = || -> Result<Tensor> {
        let h = conv2d(&x, k.as_tensor(), Some(kb.as_tensor()), 1, 0)?; // [4, 3, 3, 3]
        let h = max_pool2d(&h, 2)?.flatten_from(1)?; // [4, 3]
        let h = Tensor::cat(&[&h, &h, &h, &h], 1)?; // [4, 12]
        let h = linear(&h, w.as_tensor(), Some(b.as_tensor()), true)?;
        let h = linear(&h, w.as_tensor(), None, false)?; // w used twice
        let h = (&h + h.matmul(w.as_tensor())?)?; // and once more by candle's own matmul
        let h = linear(&h, &frozen, None, false)?;
        let h = layer_norm(&h, ln_w.as_tensor(), ln_b.as_tensor(), 1e-5)?;
        let h = softmax_last(&h)?;
        // mean cross-entropy, composed: -mean(log_softmax(h)[ids])
        let lse = h.exp()?.sum_keepdim(1)?.log()?;
        let logp = h.broadcast_sub(&lse)?;
        Ok(logp.gather(&ids.unsqueeze(1)?, 1)?.mean_all()?.neg()?)
    };
    let plain = loss()?.backward()?;
    let direct = backward(&loss()?)?;
    for v in [&k, &kb, &w, &b, &ln_w, &ln_b] {
        close(direct.get(v).unwrap(), plain.get(v).unwrap(), 1e-5);
    }
    assert!(direct.get(&frozen).is_none() && plain.get(&frozen).is_none());
    Ok(())
}

/// im2col and col2im against their definitions, element by element, over strides 1-3 and paddings 0-2
/// (the cases candle's own convolution backward cannot serve as a reference for).
#[test]
fn im2col_and_col2im_follow_their_definitions() {
    for (h, w, k, stride, padding) in [
        (5, 7, 3, 1, 0),
        (6, 5, 3, 2, 1),
        (7, 8, 2, 3, 2),
        (4, 4, 3, 3, 2),
    ] {
        let g = ConvGeo {
            c: 2,
            h,
            w,
            o: 1,
            kh: k,
            kw: k,
            stride,
            padding,
        };
        let (oh, ow) = g.out_hw();
        let img: Vec<f32> = (0..2 * h * w).map(|i| i as f32 + 1.0).collect();
        let mut cols = vec![f32::NAN; g.k() * oh * ow];
        g.im2col(&img, &mut cols);
        let mut back = vec![0f32; img.len()];
        let mut want_back = vec![0f32; img.len()];
        for c in 0..2 {
            for ky in 0..k {
                for kx in 0..k {
                    for oy in 0..oh {
                        for ox in 0..ow {
                            let iy = (oy * stride + ky) as isize - padding as isize;
                            let ix = (ox * stride + kx) as isize - padding as isize;
                            let inside =
                                iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w;
                            let at = ((c * k + ky) * k + kx) * oh * ow + oy * ow + ox;
                            let want = if inside {
                                img[(c * h + iy as usize) * w + ix as usize]
                            } else {
                                0.0
                            };
                            assert_eq!(cols[at], want, "{h}x{w} k{k} s{stride} p{padding} at {at}");
                            if inside {
                                want_back[(c * h + iy as usize) * w + ix as usize] += cols[at];
                            }
                        }
                    }
                }
            }
        }
        g.col2im(&cols, &mut back);
        assert_eq!(back, want_back);
    }
}

/// The fused conv + ReLU + max-pool equals the three ops one after the other (the separate max-pool is
/// checked against a hand-computed gradient above): values and every gradient, odd sizes included.
#[test]
fn fused_conv_relu_pool_equals_the_separate_ops() -> Result<()> {
    let dev = Device::Cpu;
    for (h, w, stride, padding, pool) in [
        (9, 7, 1, 0, 2),
        (8, 8, 1, 1, 2),
        (10, 9, 2, 1, 2),
        (9, 9, 1, 1, 3),
    ] {
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 4, h, w), &dev)?)?;
        let k = Var::from_tensor(&Tensor::randn(0f32, 0.5, (5, 4, 3, 3), &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.5, 5, &dev)?)?;
        let fused = conv2d_relu_pool(
            x.as_tensor(),
            k.as_tensor(),
            Some(b.as_tensor()),
            stride,
            padding,
            pool,
        )?;
        let plain = max_pool2d(
            &conv2d_relu(
                x.as_tensor(),
                k.as_tensor(),
                Some(b.as_tensor()),
                stride,
                padding,
            )?,
            pool,
        )?;
        assert_eq!(fused.dims(), plain.dims());
        close(&fused, &plain, 0.0);
        let r = Tensor::randn(0f32, 1.0, plain.dims(), &dev)?;
        let gf = backward(&(&fused * &r)?.sum_all()?)?;
        let gp = (&plain * &r)?.sum_all()?.backward()?;
        for v in [&x, &k, &b] {
            close(gf.get(v).unwrap(), gp.get(v).unwrap(), 1e-5);
        }
    }
    Ok(())
}

/// A batch norm over `c` channels with random scale, shift and running statistics (so evaluation really
/// rescales), as candle-nn holds it.
fn random_bn(c: usize, dev: &Device) -> Result<candle_nn::BatchNorm> {
    Ok(candle_nn::BatchNorm::new(
        c,
        Tensor::randn(0f32, 0.5, c, dev)?,
        (Tensor::rand(0f32, 1.0, c, dev)? + 0.5)?,
        Tensor::randn(1f32, 0.3, c, dev)?,
        Tensor::randn(0f32, 0.3, c, dev)?,
        1e-5,
    )?)
}

/// candle-nn's evaluation-mode batch norm after `y`, then ReLU when `relu`: the unfolded reference.
fn bn_eval(bn: &candle_nn::BatchNorm, y: &Tensor, relu: bool) -> Result<Tensor> {
    use candle_nn::ModuleT;
    let z = bn.forward_t(y, false)?;
    Ok(if relu { z.relu()? } else { z })
}

/// The inference ops that fold an evaluation-mode batch norm into the convolution before it equal candle's
/// convolution followed by candle-nn's batch norm (and ReLU): a 3x3 conv with and without bias, strides and
/// padding, a 1x1 pointwise conv (its no-im2col path), depthwise convs at strides 1 and 2, and a whole
/// depthwise-separable block. Their outputs record nothing for autograd.
#[test]
fn batch_norm_folded_inference_matches_conv_then_batch_norm() -> Result<()> {
    let dev = Device::Cpu;
    let vm = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&vm, DType::F32, &dev);
    for (i, (cin, cout, k, stride, padding, bias, relu)) in [
        (3, 5, 3, 1, 1, false, true),
        (3, 5, 3, 2, 1, true, false),
        (4, 6, 1, 1, 0, false, true),
        (4, 6, 1, 2, 0, true, true),
    ]
    .into_iter()
    .enumerate()
    {
        let cfg = candle_nn::Conv2dConfig {
            padding,
            stride,
            ..Default::default()
        };
        let vb = vb.pp(format!("c{i}"));
        let conv = if bias {
            candle_nn::conv2d(cin, cout, k, cfg, vb)?
        } else {
            candle_nn::conv2d_no_bias(cin, cout, k, cfg, vb)?
        };
        let bn = random_bn(cout, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (2, cin, 7, 6), &dev)?;
        let folded = conv2d_bn(&conv, &bn, &x, relu)?;
        let reference = bn_eval(&bn, &candle_core::Module::forward(&conv, &x)?, relu)?;
        assert_eq!(folded.dims(), reference.dims());
        close(&folded, &reference, 1e-5);
        assert!(!folded.track_op());
    }
    // channel counts below, at, above and between multiples of the vector width
    for (stride, padding, c) in [
        ((1, 1), (1, 1), 4),
        ((2, 2), (1, 1), 4),
        ((1, 1), (0, 0), 4),
        ((2, 2), (0, 0), 33),
        ((1, 1), (1, 1), 32),
        ((2, 2), (1, 1), 48),
        ((1, 1), (0, 0), 32),
    ] {
        let o = 6;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, c, 9, 8), &dev)?)?;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.5, (c, 1, 3, 3), &dev)?)?;
        let bn = random_bn(c, &dev)?;
        let grouped = x
            .as_tensor()
            .conv2d(w.as_tensor(), padding.0, stride.0, 1, c)?;
        let dw = depthwise_conv2d_bn(x.as_tensor(), w.as_tensor(), &bn, padding, stride, true)?;
        close(&dw, &bn_eval(&bn, &grouped, true)?, 1e-5);
        assert!(!dw.track_op());
        let pw = candle_nn::conv2d_no_bias(
            c,
            o,
            1,
            Default::default(),
            vb.pp(format!("pw{}{}{c}", stride.0, padding.0)),
        )?;
        let bn_pw = random_bn(o, &dev)?;
        let block = depthwise_separable_bn(
            x.as_tensor(),
            w.as_tensor(),
            &bn,
            padding,
            stride,
            &pw,
            &bn_pw,
        )?;
        let mid = bn_eval(&bn, &grouped, true)?;
        let reference = bn_eval(&bn_pw, &candle_core::Module::forward(&pw, &mid)?, true)?;
        assert_eq!(block.dims(), reference.dims());
        close(&block, &reference, 1e-5);
        assert!(!block.track_op());
    }
    // the pointwise kernel must take the depthwise channels
    let x = Tensor::randn(0f32, 1.0, (1, 4, 5, 5), &dev)?;
    let w = Tensor::randn(0f32, 1.0, (4, 1, 3, 3), &dev)?;
    let pw = candle_nn::conv2d_no_bias(3, 2, 1, Default::default(), vb.pp("bad"))?;
    let err = depthwise_separable_bn(
        &x,
        &w,
        &random_bn(4, &dev)?,
        (1, 1),
        (1, 1),
        &pw,
        &random_bn(2, &dev)?,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("pointwise kernel [2, 3, 1, 1]"), "{err}");
    Ok(())
}

/// Inside a one-thread rayon pool (a latency measurement's) gemm is asked for one thread, outside for the
/// process's threads.
#[test]
fn gemm_runs_on_one_thread_inside_a_one_thread_pool() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert!(matches!(
        pool.install(linear::parallelism),
        gemm::Parallelism::None
    ));
    let n = candle_core::utils::get_num_threads().min(rayon::current_num_threads());
    match linear::parallelism() {
        gemm::Parallelism::Rayon(k) => assert_eq!(k, n),
        gemm::Parallelism::None => assert_eq!(n, 1),
    }
}

/// The fused softplus sum equals the composed `max(z, 0) + ln(1 + e^−|z|)` summed, value and gradient,
/// including scores far out on both sides (no overflow).
#[test]
fn fused_softplus_sum_matches_the_composed_ops() -> Result<()> {
    let dev = Device::Cpu;
    let x = Var::from_tensor(&(Tensor::randn(0f32, 1.0, (37, 300), &dev)? * 20.0)?)?;
    for (a, b) in [(1.0, 0.0), (1.0 / 0.07, -3.5), (-14.0, 2.0)] {
        let fused = softplus_sum(x.as_tensor(), a, b)?.expect("f32 on the CPU takes the fused op");
        let z = x.as_tensor().affine(a, b)?;
        let composed = (z.relu()? + z.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?.sum_all()?;
        let (fv, cv) = (fused.to_scalar::<f32>()?, composed.to_scalar::<f32>()?);
        assert!(
            (fv - cv).abs() <= 1e-5 * cv.abs().max(1.0),
            "a {a}: {fv} vs {cv}"
        );
        let gf = fused.backward()?.get(x.as_tensor()).unwrap().clone();
        let gc = composed.backward()?.get(x.as_tensor()).unwrap().clone();
        close(&gf, &gc, 1e-5);
    }
    assert!(softplus_sum(&Tensor::zeros(3, candle_core::DType::F64, &dev)?, 1.0, 0.0)?.is_none());
    Ok(())
}
