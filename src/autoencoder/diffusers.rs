//! Import of diffusers autoencoders: a folder with `config.json` and
//! `diffusion_pytorch_model.safetensors` of an `AutoencoderKL` or a `VQModel` (Stable Diffusion's
//! VAE, LDM's VQ models, ...) -> an [`AutoencoderModel`] with LDM's variable names.
//!
//! Config keys (diffusers 0.42): `in_channels`, `out_channels`, `block_out_channels` (= `ch x
//! ch_mult`), `layers_per_block` (= `num_res_blocks`), `down_block_types` /
//! `up_block_types` (`DownEncoderBlock2D` / `AttnDownEncoderBlock2D`, `UpDecoderBlock2D` /
//! `AttnUpDecoderBlock2D`), `latent_channels` (= `z_channels`; KL: also `embed_dim`),
//! `vq_embed_dim` and `num_vq_embeddings` (VQ), `norm_num_groups`, `act_fn` (`silu`),
//! `mid_block_add_attention`, `use_quant_conv` / `use_post_quant_conv` (KL), `norm_type`
//! (`group`), `scaling_factor` (KL only: diffusers' VQ pipelines never read it, and LDM trained on
//! VQ latents unscaled), `shift_factor`. `sample_size`, `force_upcast`,
//! `lookup_from_codebook` and `_`-prefixed keys do not change the network and are skipped. Any
//! other key, class or block type is refused with its name.
//!
//! Weight names: `encoder.down_blocks.{i}.resnets.{j}.*` -> `encoder.down.{i}.block.{j}.*`
//! (`conv_shortcut` -> `nin_shortcut`), `.attentions.{j}.{group_norm, to_q, to_k, to_v, to_out.0}`
//! -> `.attn.{j}.{norm, q, k, v, proj_out}` (also the older `query`, `key`, `value`, `proj_attn`;
//! linear `[C, C]` weights become 1x1 convs), `downsamplers.0.conv` -> `downsample.conv`,
//! `mid_block.resnets.{0,1}` / `attentions.0` -> `mid.block_{1,2}` / `attn_1`, `conv_norm_out` ->
//! `norm_out`; `decoder.up_blocks.{k}` -> `decoder.up.{L-1-k}`, `upsamplers.0.conv` ->
//! `upsample.conv`; `quant_conv`, `post_quant_conv`, `quantize.embedding.weight` as they are.
//! Half-precision files are converted to f32. A tensor with no place, a missing tensor or a shape
//! that differs from the config's is a one-line error naming the tensor and both shapes.
use super::config::{AutoencoderConfig, Bottleneck};
use super::model::{AutoencoderModel, Manifest, FORMAT};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Kind, Tensor};

pub const CONFIG: &str = "config.json";
pub const WEIGHTS: &str = "diffusion_pytorch_model.safetensors";

/// Config keys that do not change the network.
const SKIPPED: &[&str] = &["sample_size", "force_upcast", "lookup_from_codebook", "latents_mean", "latents_std"];

/// The diffusers class of a folder.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Class {
    AutoencoderKl,
    VqModel,
}

impl Class {
    pub fn name(self) -> &'static str {
        match self {
            Class::AutoencoderKl => "AutoencoderKL",
            Class::VqModel => "VQModel",
        }
    }
}

/// What [`read_config`] found: the layout and the latent scaling of a diffusers config.
#[derive(Clone, Debug)]
pub struct DiffusersConfig {
    pub class: Class,
    pub config: AutoencoderConfig,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// `_diffusers_version`, when recorded.
    pub version: Option<String>,
}

/// Parse a diffusers `config.json` text (`origin` names it in errors).
pub fn parse_config(text: &str, origin: &str) -> Result<DiffusersConfig> {
    let v: Value = serde_json::from_str(text).map_err(|e| anyhow::anyhow!("{origin} is not valid JSON: {e}"))?;
    let obj = v.as_object().ok_or_else(|| anyhow::anyhow!("{origin} is not a JSON object"))?;
    let class = match obj.get("_class_name").and_then(Value::as_str) {
        Some("AutoencoderKL") => Class::AutoencoderKl,
        Some("VQModel") => Class::VqModel,
        Some(other) => {
            bail!("{origin}: diffusers class '{other}' is not supported (supported: AutoencoderKL, VQModel)")
        }
        None => bail!("{origin} has no _class_name: not a diffusers model config"),
    };
    let known: &[&str] = match class {
        Class::AutoencoderKl => &[
            "in_channels",
            "out_channels",
            "down_block_types",
            "up_block_types",
            "block_out_channels",
            "layers_per_block",
            "act_fn",
            "latent_channels",
            "norm_num_groups",
            "scaling_factor",
            "shift_factor",
            "use_quant_conv",
            "use_post_quant_conv",
            "mid_block_add_attention",
        ],
        Class::VqModel => &[
            "in_channels",
            "out_channels",
            "down_block_types",
            "up_block_types",
            "block_out_channels",
            "layers_per_block",
            "act_fn",
            "latent_channels",
            "num_vq_embeddings",
            "norm_num_groups",
            "vq_embed_dim",
            "scaling_factor",
            "norm_type",
            "mid_block_add_attention",
        ],
    };
    for (k, val) in obj {
        if !(k.starts_with('_') || known.contains(&k.as_str()) || SKIPPED.contains(&k.as_str())) {
            bail!("{origin}: config key '{k}' (= {val}) of {} is not supported", class.name());
        }
    }
    // diffusers' defaults for a key that is absent (the class's __init__ signature, 0.42).
    let int = |k: &str, d: usize| -> Result<usize> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(x) => x
                .as_u64()
                .map(|n| n as usize)
                .ok_or_else(|| anyhow::anyhow!("{origin}: '{k}' must be a non-negative integer, got {x}")),
        }
    };
    let flag = |k: &str, d: bool| -> Result<bool> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(d),
            Some(x) => x.as_bool().ok_or_else(|| anyhow::anyhow!("{origin}: '{k}' must be true or false, got {x}")),
        }
    };
    let strings = |k: &str, d: &str| -> Result<Vec<String>> {
        match obj.get(k) {
            None => Ok(vec![d.to_string()]),
            Some(Value::Array(a)) => a
                .iter()
                .map(|x| {
                    x.as_str()
                        .map(String::from)
                        .ok_or_else(|| anyhow::anyhow!("{origin}: '{k}' must be a list of strings"))
                })
                .collect(),
            Some(x) => bail!("{origin}: '{k}' must be a list of strings, got {x}"),
        }
    };
    let act = obj.get("act_fn").and_then(Value::as_str).unwrap_or("silu");
    ensure!(
        act == "silu" || act == "swish",
        "{origin}: act_fn '{act}' is not supported (only silu, which LDM calls swish)"
    );
    if let Some(n) = obj.get("norm_type").and_then(Value::as_str) {
        ensure!(
            n == "group",
            "{origin}: norm_type '{n}' is not supported (only 'group'; 'spatial' is MoVQ's conditional norm)"
        );
    }
    let widths: Vec<usize> = match obj.get("block_out_channels") {
        None => vec![64],
        Some(Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|n| n as usize)
                    .ok_or_else(|| anyhow::anyhow!("{origin}: block_out_channels must be a list of integers"))
            })
            .collect::<Result<_>>()?,
        Some(x) => bail!("{origin}: block_out_channels must be a list of integers, got {x}"),
    };
    ensure!(
        !widths.is_empty() && widths[0] > 0,
        "{origin}: block_out_channels must be a non-empty list of positive integers"
    );
    let ch = widths[0];
    let mut ch_mult = Vec::new();
    for &w in &widths {
        ensure!(w % ch == 0, "{origin}: block_out_channels {widths:?} is not a multiple of its first entry {ch} (msdiff's layout is ch x ch_mult)");
        ch_mult.push(w / ch);
    }
    let levels = widths.len();
    let down = strings("down_block_types", "DownEncoderBlock2D")?;
    let up = strings("up_block_types", "UpDecoderBlock2D")?;
    ensure!(
        down.len() == levels && up.len() == levels,
        "{origin}: {} down and {} up block types for {levels} block_out_channels",
        down.len(),
        up.len()
    );
    let mut attn_levels = Vec::new();
    for (i, t) in down.iter().enumerate() {
        let enc_attn = match t.as_str() {
            "DownEncoderBlock2D" => false,
            "AttnDownEncoderBlock2D" => true,
            other => bail!("{origin}: down block type '{other}' is not supported (supported: DownEncoderBlock2D, AttnDownEncoderBlock2D)"),
        };
        let dec_attn = match up[levels - 1 - i].as_str() {
            "UpDecoderBlock2D" => false,
            "AttnUpDecoderBlock2D" => true,
            other => bail!("{origin}: up block type '{other}' is not supported (supported: UpDecoderBlock2D, AttnUpDecoderBlock2D)"),
        };
        ensure!(
            enc_attn == dec_attn,
            "{origin}: attention at level {i} in the {} but not in the {} (down_block_types[{i}] = {t}, up_block_types[{}] = {}); msdiff's layout has it in both or neither",
            if enc_attn { "encoder" } else { "decoder" },
            if enc_attn { "decoder" } else { "encoder" },
            levels - 1 - i,
            up[levels - 1 - i]
        );
        if enc_attn {
            attn_levels.push(i);
        }
    }
    let (latent_default, bottleneck) = match class {
        Class::AutoencoderKl => (4, Bottleneck::Kl),
        Class::VqModel => (3, Bottleneck::Vq),
    };
    let z = int("latent_channels", latent_default)?;
    let (embed_dim, n_embed, quant_conv, post_quant_conv) = match class {
        Class::AutoencoderKl => (z, 0, flag("use_quant_conv", true)?, flag("use_post_quant_conv", true)?),
        Class::VqModel => (int("vq_embed_dim", z)?, int("num_vq_embeddings", 256)?, true, true),
    };
    let config = AutoencoderConfig {
        bottleneck,
        in_channels: int("in_channels", 3)?,
        out_channels: int("out_channels", 3)?,
        ch,
        ch_mult,
        num_res_blocks: int("layers_per_block", 1)?,
        attn_levels,
        z_channels: z,
        embed_dim,
        n_embed,
        norm_groups: int("norm_num_groups", 32)?,
        norm_eps: 1e-6,
        mid_attention: flag("mid_block_add_attention", true)?,
        quant_conv,
        post_quant_conv,
    };
    config.validate().with_context(|| format!("{origin} describes a layout msdiff cannot build"))?;
    let number = |k: &str| -> Result<Option<f64>> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(None),
            Some(x) => x.as_f64().map(Some).ok_or_else(|| anyhow::anyhow!("{origin}: '{k}' must be a number, got {x}")),
        }
    };
    let scaling_factor = number("scaling_factor")?.unwrap_or(0.18215);
    ensure!(
        scaling_factor.is_finite() && scaling_factor > 0.0,
        "{origin}: scaling_factor must be > 0, got {scaling_factor}"
    );
    let shift_factor = number("shift_factor")?;
    let version = obj.get("_diffusers_version").and_then(Value::as_str).map(String::from);
    Ok(DiffusersConfig { class, config, scaling_factor, shift_factor, version })
}

/// Map one diffusers tensor name to msdiff's (LDM's) name; `None` if it has no place in the layout.
pub fn map_name(name: &str, levels: usize) -> Option<String> {
    let parts: Vec<&str> = name.split('.').collect();
    let leaf = *parts.last()?;
    if leaf != "weight" && leaf != "bias" {
        return None;
    }
    let body = &parts[..parts.len() - 1];
    let resnet = |p: &[&str]| -> Option<String> {
        match p {
            [m @ ("norm1" | "conv1" | "norm2" | "conv2")] => Some(m.to_string()),
            ["conv_shortcut"] => Some("nin_shortcut".into()),
            _ => None,
        }
    };
    let attention = |p: &[&str]| -> Option<String> {
        Some(
            match p {
                ["group_norm"] => "norm",
                ["to_q"] | ["query"] => "q",
                ["to_k"] | ["key"] => "k",
                ["to_v"] | ["value"] => "v",
                ["to_out", "0"] | ["proj_attn"] => "proj_out",
                _ => return None,
            }
            .to_string(),
        )
    };
    let level_index = |s: &str| s.parse::<usize>().ok().filter(|&i| i < levels);
    let mapped = match body {
        [top @ ("quant_conv" | "post_quant_conv")] => top.to_string(),
        ["quantize", "embedding"] if leaf == "weight" => "quantize.embedding".into(),
        [coder @ ("encoder" | "decoder"), rest @ ..] => {
            let inner = match rest {
                ["conv_in"] => "conv_in".to_string(),
                ["conv_out"] => "conv_out".to_string(),
                ["conv_norm_out"] => "norm_out".to_string(),
                ["mid_block", "resnets", j, r @ ..] => {
                    let b = match *j {
                        "0" => "block_1",
                        "1" => "block_2",
                        _ => return None,
                    };
                    format!("mid.{b}.{}", resnet(r)?)
                }
                ["mid_block", "attentions", "0", r @ ..] => format!("mid.attn_1.{}", attention(r)?),
                [blocks, i, kind, rest2 @ ..] => {
                    let (want, group) = if *coder == "encoder" { ("down_blocks", "down") } else { ("up_blocks", "up") };
                    if blocks != &want {
                        return None;
                    }
                    let k = level_index(i)?;
                    let level = if *coder == "encoder" { k } else { levels - 1 - k };
                    let tail = match (*kind, rest2) {
                        ("resnets", [j, r @ ..]) => format!("block.{}.{}", j.parse::<usize>().ok()?, resnet(r)?),
                        ("attentions", [j, r @ ..]) => format!("attn.{}.{}", j.parse::<usize>().ok()?, attention(r)?),
                        ("downsamplers", ["0", "conv"]) if *coder == "encoder" => "downsample.conv".into(),
                        ("upsamplers", ["0", "conv"]) if *coder == "decoder" => "upsample.conv".into(),
                        _ => return None,
                    };
                    format!("{group}.{level}.{tail}")
                }
                _ => return None,
            };
            format!("{coder}.{inner}")
        }
        _ => return None,
    };
    Some(format!("{mapped}.{leaf}"))
}

/// Read a diffusers folder into an [`AutoencoderModel`] on `device`.
pub fn import(dir: &Path, device: Device) -> Result<AutoencoderModel> {
    ensure!(
        dir.is_dir(),
        "{}: no such folder (expected a diffusers folder with {CONFIG} and {WEIGHTS})",
        dir.display()
    );
    let cpath = dir.join(CONFIG);
    let wpath = dir.join(WEIGHTS);
    if !cpath.is_file() || !wpath.is_file() {
        let bin = dir.join("diffusion_pytorch_model.bin");
        if bin.is_file() && !wpath.is_file() {
            bail!("{} holds diffusion_pytorch_model.bin (a pickle); msdiff reads only safetensors: re-save it with save_pretrained(..., safe_serialization=True)", dir.display());
        }
        bail!("{} is not a diffusers model folder: expected {CONFIG} and {WEIGHTS}", dir.display());
    }
    let text = std::fs::read_to_string(&cpath).with_context(|| format!("cannot read {}", cpath.display()))?;
    let dc = parse_config(&text, &cpath.display().to_string())?;
    let named = Tensor::read_safetensors(&wpath)
        .map_err(|e| anyhow::anyhow!("{} is corrupt or not safetensors: {e}", wpath.display()))?;
    let levels = dc.config.ch_mult.len();
    let source = format!(
        "diffusers {} {} ({})",
        dc.class.name(),
        dir.display(),
        dc.version
            .as_deref()
            .map(|v| format!("saved by diffusers {v}"))
            .unwrap_or_else(|| "diffusers version not recorded".into())
    );
    let mut model = AutoencoderModel::new(&dc.config, 0, device, source)?;
    let ours: BTreeMap<String, Tensor> = model.params().into_iter().collect();
    let mut mapped: Vec<(String, Tensor)> = Vec::with_capacity(named.len());
    let mut from: BTreeMap<String, String> = BTreeMap::new();
    let mut converted = false;
    for (name, t) in named {
        let Some(target) = map_name(&name, levels) else {
            bail!(
                "{}: tensor '{name}' {:?} has no place in a {} with this config",
                wpath.display(),
                t.size(),
                dc.class.name()
            );
        };
        let Some(want) = ours.get(&target) else {
            bail!(
                "{}: tensor '{name}' {:?} has no place in a {} with this config (it would be '{target}')",
                wpath.display(),
                t.size(),
                dc.class.name()
            );
        };
        let want_shape = want.size();
        let t = match t.kind() {
            Kind::Float => t,
            Kind::Half | Kind::BFloat16 | Kind::Double => {
                converted = true;
                t.to_kind(Kind::Float)
            }
            k => bail!("{}: tensor '{name}' is {k:?}; expected floating-point weights", wpath.display()),
        };
        // Linear attention maps [C, C] are our 1x1 convs [C, C, 1, 1].
        let t = if t.size().len() == 2 && want_shape.len() == 4 && want_shape[2] == 1 && want_shape[3] == 1 {
            t.reshape(want_shape.as_slice())
        } else {
            t
        };
        ensure!(
            t.size() == want_shape,
            "{}: tensor '{name}' has shape {:?} in the file but {} makes it {want_shape:?}",
            wpath.display(),
            t.size(),
            cpath.display()
        );
        if let Some(prev) = from.insert(target.clone(), name.clone()) {
            bail!("{}: tensors '{prev}' and '{name}' both map to '{target}'", wpath.display());
        }
        mapped.push((target, t));
    }
    for (target, t) in &ours {
        ensure!(
            from.contains_key(target),
            "{}: no tensor for '{target}' {:?}, which {} requires",
            wpath.display(),
            t.size(),
            cpath.display()
        );
    }
    model.set_weights(&mapped, "diffusers weights")?;
    // diffusers' latent pipelines scale KL latents by scaling_factor; its VQ pipelines (LDM) never
    // read it (save_pretrained writes the class default 0.18215 anyway), and LDM trained on VQ
    // latents with scale 1.0. So a VQModel's value is recorded in the provenance but not used.
    let mut source = model.manifest.source.clone();
    if converted {
        source.push_str("; half-precision weights converted to f32");
    }
    let scaling_factor = match dc.class {
        Class::AutoencoderKl => Some(dc.scaling_factor),
        Class::VqModel => {
            source.push_str(&format!(
                "; its scaling_factor {} is not used (diffusers' VQ pipelines do not scale)",
                dc.scaling_factor
            ));
            None
        }
    };
    model.manifest = Manifest {
        format: FORMAT.into(),
        config: dc.config.clone(),
        scaling_factor,
        shift_factor: dc.shift_factor,
        source,
    };
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_map_to_ldm_names() {
        let m = |n: &str| map_name(n, 3);
        assert_eq!(
            m("encoder.down_blocks.1.resnets.0.conv_shortcut.weight").as_deref(),
            Some("encoder.down.1.block.0.nin_shortcut.weight")
        );
        assert_eq!(
            m("encoder.down_blocks.0.downsamplers.0.conv.bias").as_deref(),
            Some("encoder.down.0.downsample.conv.bias")
        );
        assert_eq!(
            m("decoder.up_blocks.0.upsamplers.0.conv.weight").as_deref(),
            Some("decoder.up.2.upsample.conv.weight")
        );
        assert_eq!(
            m("decoder.up_blocks.2.resnets.1.norm2.weight").as_deref(),
            Some("decoder.up.0.block.1.norm2.weight")
        );
        assert_eq!(
            m("encoder.mid_block.attentions.0.to_out.0.weight").as_deref(),
            Some("encoder.mid.attn_1.proj_out.weight")
        );
        assert_eq!(m("decoder.mid_block.attentions.0.query.bias").as_deref(), Some("decoder.mid.attn_1.q.bias"));
        assert_eq!(m("decoder.mid_block.resnets.1.conv1.weight").as_deref(), Some("decoder.mid.block_2.conv1.weight"));
        assert_eq!(m("encoder.conv_norm_out.weight").as_deref(), Some("encoder.norm_out.weight"));
        assert_eq!(m("quantize.embedding.weight").as_deref(), Some("quantize.embedding.weight"));
        for bad in [
            "encoder.down_blocks.3.resnets.0.conv1.weight",
            "decoder.downsamplers.0.conv.weight",
            "encoder.mid_block.resnets.2.conv1.weight",
            "lpips.net.weight",
            "encoder.conv_in.running_mean",
        ] {
            assert_eq!(m(bad), None, "{bad}");
        }
    }

    #[test]
    fn configs_and_their_refusals() {
        let sd = r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.6.0", "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D", "DownEncoderBlock2D"], "in_channels": 3,
            "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D"]}"#;
        let c = parse_config(sd, "sd").unwrap();
        assert_eq!(
            c.config,
            AutoencoderConfig::preset("kl-f8").unwrap(),
            "Stable Diffusion's VAE config is the kl-f8 preset"
        );
        assert_eq!((c.scaling_factor, c.shift_factor), (0.18215, None), "the class default scaling_factor applies");
        let e = parse_config(
            &sd.replace(
                "\"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"",
                "\"DownEncoderBlock2D\", \"CrossAttnDownBlock2D\", \"DownEncoderBlock2D\", \"DownEncoderBlock2D\"",
            ),
            "c",
        )
        .unwrap_err();
        assert!(e.to_string().contains("'CrossAttnDownBlock2D' is not supported"), "{e}");
        let e = parse_config(&sd.replace("AutoencoderKL", "AutoencoderTiny"), "c").unwrap_err();
        assert!(e.to_string().contains("'AutoencoderTiny' is not supported"), "{e}");
        let e = parse_config(&sd.replace("\"sample_size\"", "\"frobnicate\""), "c").unwrap_err();
        assert!(e.to_string().contains("'frobnicate'"), "{e}");
        let e = parse_config(&sd.replace("[128, 256, 512, 512]", "[96, 128, 256, 256]"), "c").unwrap_err();
        assert!(e.to_string().contains("multiple of its first entry"), "{e}");
    }
}
