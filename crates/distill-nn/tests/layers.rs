//! The layers through their public API: PyTorch's parameter names and shapes, outputs against the same
//! arithmetic written out with plain candle ops, and bad configurations as errors.

use candle_core::{Device, Tensor};
use candle_nn::VarMap;
use distill_nn::{
    init::seeded_var_builder,
    layers::{
        bert::{Bert, BertConfig},
        BasicBlock, BlockKind, Bottleneck, Conv1d, ConvBn, ConvConfig, DepthwiseSeparable,
        Embedding, LayerNorm, Linear, LinearConfig, Mlp, MlpConfig, ResNetTrunk, ResNetTrunkConfig,
    },
    Mode, Result,
};

fn names_and_shapes(vm: &VarMap) -> Vec<(String, Vec<usize>)> {
    let mut v: Vec<(String, Vec<usize>)> = vm
        .data()
        .lock()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.clone(), v.dims().to_vec()))
        .collect();
    v.sort();
    v
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let mut rng = distill_nn::Rng::new(seed);
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.normal() as f32).collect();
    Tensor::from_vec(v, shape, &Device::Cpu).unwrap()
}

#[test]
fn linear_and_mlp_match_plain_matmuls_and_use_pytorch_names() -> Result<()> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 1, &Device::Cpu);
    let lin = Linear::new(&LinearConfig::new(5, 3), vb.pp("proj"))?;
    let x = randn(&[4, 5], 2);
    let want = x
        .matmul(&lin.weight().t()?)?
        .broadcast_add(lin.bias().unwrap())?;
    assert!(max_diff(&lin.forward(&x)?, &want) < 1e-5);
    assert!(max_diff(&lin.forward_relu(&x)?, &want.relu()?) < 1e-5);
    assert_eq!(
        names_and_shapes(&vm),
        [
            ("proj.bias".into(), vec![3]),
            ("proj.weight".into(), vec![3, 5])
        ]
    );

    let vm = VarMap::new();
    let mlp = Mlp::new(
        &MlpConfig::new(5, &[7, 6], 2),
        seeded_var_builder(&vm, 1, &Device::Cpu),
    )?;
    let names: Vec<String> = names_and_shapes(&vm).into_iter().map(|(k, _)| k).collect();
    assert_eq!(
        names,
        [
            "fc1.bias",
            "fc1.weight",
            "fc2.bias",
            "fc2.weight",
            "fc3.bias",
            "fc3.weight"
        ]
    );
    let out = mlp.forward_all(&x, Mode::Eval, "t")?;
    assert_eq!(out.output.dims(), [4, 2]);
    assert_eq!(out.hidden.len(), 2);
    assert_eq!(mlp.flops(), 2 * (5 * 7 + 7 * 6 + 6 * 2));
    assert!(Mlp::new(
        &MlpConfig::new(5, &[], 2),
        seeded_var_builder(&VarMap::new(), 1, &Device::Cpu)
    )
    .is_err());
    Ok(())
}

#[test]
fn conv1d_matches_candles_forward_and_conv_blocks_have_torch_names() -> Result<()> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 3, &Device::Cpu);
    let c = Conv1d::new(&ConvConfig::new(3, 4, 5).stride(2), vb.pp("conv"))?;
    let x = randn(&[2, 3, 17], 4);
    let w = vm.data().lock().unwrap()["conv.weight"].as_tensor().clone();
    let b = vm.data().lock().unwrap()["conv.bias"].as_tensor().clone();
    // candle's conv1d forward is right (only its kernel gradient is not)
    let want = x
        .conv1d(&w, 2, 2, 1, 1)?
        .broadcast_add(&b.reshape((1, 4, 1))?)?;
    let got = c.forward(&x)?;
    assert_eq!(got.dims(), want.dims());
    assert!(max_diff(&got, &want) < 1e-4);
    assert_eq!(c.config().out_size(17), 9);

    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 3, &Device::Cpu);
    let cb = ConvBn::new(&ConvConfig::new(3, 8, 3).stride(2), vb.pp("stem"))?;
    let ds = DepthwiseSeparable::new(&ConvConfig::new(8, 6, 3), vb.pp("blocks.0"))?;
    let y = cb.forward(&randn(&[2, 3, 9, 9], 5), false, true)?;
    assert_eq!(y.dims(), [2, 8, 5, 5]);
    assert_eq!(ds.forward(&y, false)?.dims(), [2, 6, 5, 5]);
    let names: Vec<String> = names_and_shapes(&vm).into_iter().map(|(k, _)| k).collect();
    for k in [
        "stem.conv.weight",
        "stem.bn.running_mean",
        "stem.bn.weight",
        "blocks.0.dw.weight",
        "blocks.0.bn_dw.bias",
        "blocks.0.pw.weight",
        "blocks.0.bn_pw.running_var",
    ] {
        assert!(names.iter().any(|n| n == k), "{k} not in {names:?}");
    }
    assert!(
        !names.iter().any(|n| n == "stem.conv.bias"),
        "ConvBn has no conv bias"
    );
    assert!(Conv1d::new(
        &ConvConfig::new(0, 4, 3),
        seeded_var_builder(&VarMap::new(), 0, &Device::Cpu)
    )
    .is_err());
    Ok(())
}

#[test]
fn resnet_blocks_and_trunk_have_torchvision_names_shapes_and_flops() -> Result<()> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 7, &Device::Cpu);
    let basic = BasicBlock::new(8, 16, 2, vb.pp("b"))?;
    let neck = Bottleneck::new(16, 4, 1, vb.pp("n"))?;
    let x = randn(&[2, 8, 8, 8], 8);
    let y = basic.forward(&x, true)?;
    assert_eq!(y.dims(), [2, 16, 4, 4]);
    assert_eq!(neck.forward(&y, false)?.dims(), [2, 16, 4, 4]);
    let shapes: std::collections::BTreeMap<String, Vec<usize>> =
        names_and_shapes(&vm).into_iter().collect();
    assert_eq!(shapes["b.conv1.weight"], [16, 8, 3, 3]);
    assert_eq!(shapes["b.downsample.0.weight"], [16, 8, 1, 1]);
    assert_eq!(shapes["n.conv1.weight"], [4, 16, 1, 1]);
    assert_eq!(shapes["n.conv3.weight"], [16, 4, 1, 1]);
    // 16 = 4 · 4 channels in and out, stride 1: the identity shortcut, no downsample
    assert!(!shapes.contains_key("n.downsample.0.weight"));

    let cfg = ResNetTrunkConfig {
        in_channels: 1,
        stem_width: 4,
        stem_stride: 1,
        stage_widths: vec![4, 8],
        blocks_per_stage: 1,
        block: BlockKind::Basic,
    };
    let vm = VarMap::new();
    let trunk = ResNetTrunk::new(&cfg, seeded_var_builder(&vm, 7, &Device::Cpu))?;
    let (stem, maps) = trunk.forward(&randn(&[1, 1, 8, 8], 9), false)?;
    assert_eq!(stem.dims(), [1, 4, 8, 8]);
    assert_eq!(maps[1].dims(), [1, 8, 4, 4]);
    assert!(vm
        .data()
        .lock()
        .unwrap()
        .contains_key("layer2.0.downsample.1.running_mean"));
    // flops by hand: stem 1→4 3x3 on 8x8; layer1 two 4→4 3x3 on 8x8; layer2 4→8 3x3 s2 + 8→8 3x3 + 1x1
    // shortcut on 4x4
    let conv = |cin: u64, cout: u64, k: u64, hw: u64| 2 * cin * cout * k * k * hw;
    let want = conv(1, 4, 3, 64)
        + 2 * conv(4, 4, 3, 64)
        + conv(4, 8, 3, 16)
        + conv(8, 8, 3, 16)
        + conv(4, 8, 1, 16);
    assert_eq!(ResNetTrunk::flops(&cfg, 8, 8), want);
    Ok(())
}

#[test]
fn layer_norm_embedding_and_bert_layers() -> Result<()> {
    let vm = VarMap::new();
    let vb = seeded_var_builder(&vm, 11, &Device::Cpu);
    let ln = LayerNorm::new(6, 1e-5, vb.pp("ln"))?;
    let x = randn(&[3, 6], 12);
    let mean = x.mean_keepdim(1)?;
    let var = x.broadcast_sub(&mean)?.sqr()?.mean_keepdim(1)?;
    let want = x
        .broadcast_sub(&mean)?
        .broadcast_div(&(var + 1e-5)?.sqrt()?)?;
    assert!(max_diff(&ln.forward(&x)?, &want) < 1e-4);

    let emb = Embedding::new(10, 4, 1.0, vb.pp("emb"))?;
    let ids = Tensor::new(&[[1u32, 9], [0, 1]], &Device::Cpu)?;
    let e = emb.forward(&ids, false)?;
    assert_eq!(e.dims(), [2, 2, 4]);
    let row1: Vec<f32> = emb.weight().get(1)?.to_vec1()?;
    assert_eq!(e.get(0)?.get(0)?.to_vec1::<f32>()?, row1);
    assert_eq!(e.get(1)?.get(1)?.to_vec1::<f32>()?, row1);
    assert!(emb
        .forward(&Tensor::new(&[10u32], &Device::Cpu)?, false)
        .is_err());

    let cfg: BertConfig = serde_json::from_str(
        r#"{"vocab_size": 30, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
            "intermediate_size": 16, "max_position_embeddings": 12}"#,
    )
    .unwrap();
    let vm = VarMap::new();
    let bert = Bert::new(&cfg, seeded_var_builder(&vm, 13, &Device::Cpu))?;
    let ids = Tensor::new(&[[2u32, 5, 7, 0], [3, 3, 0, 0]], &Device::Cpu)?;
    let out = bert.forward(&ids, Mode::Eval, "t")?;
    assert_eq!(out.hidden.len(), 3);
    assert_eq!(out.hidden[2].dims(), [2, 4, 8]);
    assert_eq!(out.attentions[0].dims(), [2, 2, 4, 4]);
    // padding keys get (almost) no attention
    let p: Vec<f32> = out.attentions[1].get(1)?.get(0)?.get(0)?.to_vec1()?;
    assert!(p[2] < 1e-3 && p[3] < 1e-3, "{p:?}");
    let names: Vec<String> = names_and_shapes(&vm).into_iter().map(|(k, _)| k).collect();
    for k in [
        "embeddings.word_embeddings.weight",
        "embeddings.LayerNorm.weight",
        "encoder.layer.1.attention.self.query.weight",
        "encoder.layer.0.attention.output.LayerNorm.bias",
        "encoder.layer.0.intermediate.dense.weight",
        "encoder.layer.1.output.dense.bias",
    ] {
        assert!(names.iter().any(|n| n == k), "{k}");
    }
    assert_eq!(cfg.embedding_params() + cfg.layer_params(), {
        let d = vm.data().lock().unwrap();
        d.values().map(|v| v.elem_count()).sum::<usize>()
    });
    Ok(())
}
