//! The GrokFast gradient filters (Lee et al., 2024), applied between backward and the optimizer.
//!
//! Both filters amplify the slow component of each parameter's gradient:
//!
//! - **EMA**: `μ ← α·μ + (1 − α)·g`, then `g ← g + λ·μ`, with μ starting at the first gradient
//!   (as the reference implementation does: the first update leaves μ equal to g).
//! - **MA**: keep the last `window` gradients; once the window is full (or from the first step
//!   when `warmup` is off) `g ← g + λ·avg`, where avg is their mean (or sum).
//!
//! Both are the reference's `gradfilter_ema` / `gradfilter_ma` (ironjr/grokfast) to float32
//! rounding: `tests/pytorch_trajectory.rs` replays grokforge runs through that code in PyTorch.
//! The filter sees the loss's gradient alone: Adam's L2 weight decay is added by the optimizer,
//! after it, as `torch.optim.Adam(weight_decay=…)` does in the reference's `main.py`.
//!
//! [`GrokFast::filter`] is a [`ModuleVisitor`] over every float parameter of any burn module: it
//! takes each parameter's gradient out of [`GradientsParams`] by [`ParamId`](burn::module::ParamId),
//! filters it and registers it back. A parameter without a gradient is skipped. The filter state
//! belongs to parameter *paths* (`blocks.0.attn.qkv.weight`), which survive a checkpoint even
//! though parameter ids are regenerated, and is serialised with [`GrokFast::state_bytes`].
//!
//! The EMA filter works on all gradients at once: it concatenates them into one vector, updates
//! one vector of averages with five operations, and hands each parameter a view of the result,
//! instead of five operations per parameter (~200 for the 41 parameters of the paper's model).
//! The averages stay addressable by path: a step whose parameters differ from the previous
//! step's (one got no gradient) regroups them, and checkpoints store them per path.
//!
//! The MA filter keeps a running sum instead of summing the window every step (two tensor
//! operations instead of `window`); it is recomputed exactly from the window every `window` steps
//! so rounding cannot drift, and it is part of the saved state so a resumed run is exact.

use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::str::FromStr;

use burn::module::{Module, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::tensor::{Device, Tensor, TensorData};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the MA filter reduces its window.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MaReduction {
    /// The mean of the window (the reference's default).
    #[default]
    Mean,
    /// The sum of the window.
    Sum,
}

/// Which filter, with its settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum GrokFastConfig {
    /// Gradients pass through unchanged.
    None,
    /// Exponential moving average.
    Ema {
        /// Momentum of the average, in [0, 1).
        alpha: f64,
        /// Amplification factor λ.
        lamb: f64,
    },
    /// Moving average over a window.
    Ma {
        /// Number of gradients averaged.
        window: usize,
        /// Amplification factor λ.
        lamb: f64,
        /// Leave gradients unfiltered until the window is full.
        warmup: bool,
        /// Mean or sum of the window.
        reduction: MaReduction,
    },
}

impl GrokFastConfig {
    /// The paper's EMA settings for x·y mod 97: α = 0.98, λ = 2.
    pub const PAPER_EMA: GrokFastConfig = GrokFastConfig::Ema {
        alpha: 0.98,
        lamb: 2.0,
    };
    /// The paper's MA settings: window 100, λ = 5, with warm-up.
    pub const PAPER_MA: GrokFastConfig = GrokFastConfig::Ma {
        window: 100,
        lamb: 5.0,
        warmup: true,
        reduction: MaReduction::Mean,
    };

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        match *self {
            GrokFastConfig::None => Ok(()),
            GrokFastConfig::Ema { alpha, lamb } => {
                if !(0.0..1.0).contains(&alpha) {
                    return Err(Error::invalid(
                        "alpha",
                        format!("must be in [0, 1), got {alpha}"),
                    ));
                }
                finite("lamb", lamb)
            }
            GrokFastConfig::Ma { window, lamb, .. } => {
                if window == 0 {
                    return Err(Error::invalid("window", "must be positive"));
                }
                finite("lamb", lamb)
            }
        }
    }

    /// The filter's name as the CLI spells it: `none`, `ema`, `ma`.
    pub fn kind(&self) -> GrokFastKind {
        match self {
            GrokFastConfig::None => GrokFastKind::None,
            GrokFastConfig::Ema { .. } => GrokFastKind::Ema,
            GrokFastConfig::Ma { .. } => GrokFastKind::Ma,
        }
    }
}

fn finite(field: &'static str, value: f64) -> Result<()> {
    if value.is_finite() {
        Ok(())
    } else {
        Err(Error::invalid(field, "must be finite"))
    }
}

/// The filter kind alone, as the `--grokfast` flag names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum GrokFastKind {
    /// No filter.
    None,
    /// [`GrokFastConfig::Ema`].
    #[default]
    Ema,
    /// [`GrokFastConfig::Ma`].
    Ma,
}

impl fmt::Display for GrokFastKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GrokFastKind::None => "none",
            GrokFastKind::Ema => "ema",
            GrokFastKind::Ma => "ma",
        })
    }
}

impl FromStr for GrokFastKind {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "none" => Ok(GrokFastKind::None),
            "ema" => Ok(GrokFastKind::Ema),
            "ma" => Ok(GrokFastKind::Ma),
            other => Err(Error::invalid(
                "grokfast",
                format!("unknown filter {other:?}; expected ema, ma or none"),
            )),
        }
    }
}

/// Per-parameter filter state, on the gradients' device, flattened to one axis. An EMA slot holds
/// the average of a parameter outside [`FlatEma`]: read from a checkpoint, or without a gradient
/// in the latest step.
#[derive(Debug, Clone)]
enum Slot {
    Ema {
        mean: Tensor<1>,
    },
    Ma {
        history: VecDeque<Tensor<1>>,
        sum: Tensor<1>,
        pushes_since_exact_sum: usize,
    },
}

/// The settings of [`GrokFastConfig::Ma`], for the step that applies them.
#[derive(Debug, Clone, Copy)]
struct MaSettings {
    window: usize,
    lamb: f64,
    warmup: bool,
    reduction: MaReduction,
}

/// A GrokFast filter and its state.
#[derive(Debug, Clone)]
pub struct GrokFast {
    config: GrokFastConfig,
    slots: BTreeMap<String, Slot>,
    /// EMA: the averages of the parameters the latest step filtered, concatenated.
    ema: Option<FlatEma>,
}

/// The EMA averages of several parameters in one vector, in the order of `layout`.
#[derive(Debug, Clone)]
struct FlatEma {
    /// Each parameter's path and element count.
    layout: Vec<(String, usize)>,
    mean: Tensor<1>,
}

impl FlatEma {
    /// Each parameter's average, by path (views of the one vector).
    fn split(&self) -> impl Iterator<Item = (&String, Tensor<1>)> {
        offsets(&self.layout)
            .map(|(path, start, len)| (path, self.mean.clone().narrow(0, start, len)))
    }
}

/// Each entry of `layout` with the offset it starts at.
fn offsets(layout: &[(String, usize)]) -> impl Iterator<Item = (&String, usize, usize)> {
    layout.iter().scan(0, |start, (path, len)| {
        let at = *start;
        *start += len;
        Some((path, at, *len))
    })
}

impl GrokFast {
    /// A filter with empty state.
    pub fn new(config: GrokFastConfig) -> Result<Self> {
        config.validate()?;
        Ok(Self {
            config,
            slots: BTreeMap::new(),
            ema: None,
        })
    }

    /// The settings.
    pub fn config(&self) -> &GrokFastConfig {
        &self.config
    }

    /// Filters the gradients of every float parameter of `module` in place and returns them.
    pub fn filter<M: Module>(&mut self, module: &M, mut grads: GradientsParams) -> GradientsParams {
        if self.config == GrokFastConfig::None {
            return grads;
        }
        let mut collector = Collector {
            path: Vec::new(),
            grads: &mut grads,
            taken: Vec::new(),
        };
        module.visit(&mut collector);
        let taken = collector.taken;
        match self.config {
            GrokFastConfig::None => {}
            GrokFastConfig::Ema { alpha, lamb } => self.filter_ema(taken, &mut grads, alpha, lamb),
            GrokFastConfig::Ma {
                window,
                lamb,
                warmup,
                reduction,
            } => {
                let settings = MaSettings {
                    window,
                    lamb,
                    warmup,
                    reduction,
                };
                for Taken {
                    path,
                    grad,
                    register,
                } in taken
                {
                    let filtered = self.apply_ma(path, grad, settings);
                    register(&mut grads, filtered);
                }
            }
        }
        grads
    }

    fn filter_ema(
        &mut self,
        taken: Vec<Taken>,
        grads: &mut GradientsParams,
        alpha: f64,
        lamb: f64,
    ) {
        if taken.is_empty() {
            return;
        }
        let mut layout = Vec::with_capacity(taken.len());
        let mut pieces = Vec::with_capacity(taken.len());
        let mut put_back = Vec::with_capacity(taken.len());
        for Taken {
            path,
            grad,
            register,
        } in taken
        {
            layout.push((path, grad.dims()[0]));
            pieces.push(grad);
            put_back.push(register);
        }
        let grad = Tensor::cat(pieces, 0);
        // The averages are held only here while they are updated: burn-tch then writes each
        // operation into the buffer of its left operand, and the only new buffers are the
        // concatenated gradients and λμ'.
        // μ' = g + α(μ − g) = αμ + (1 − α)g, then g' = g + λμ'.
        let mean = self.ema_mean(&layout, &grad);
        let updated = (mean - grad.clone()).mul_scalar(alpha) + grad.clone();
        let filtered = grad + updated.clone().mul_scalar(lamb);
        for ((_, start, len), register) in offsets(&layout).zip(put_back) {
            register(grads, filtered.clone().narrow(0, start, len));
        }
        self.ema = Some(FlatEma {
            layout,
            mean: updated,
        });
    }

    /// The averages for a step that filters the parameters of `layout`, whose gradients are
    /// `grad`: the previous step's vector when the parameters are the same, otherwise one put
    /// together path by path, a parameter seen for the first time starting at its gradient.
    fn ema_mean(&mut self, layout: &[(String, usize)], grad: &Tensor<1>) -> Tensor<1> {
        match self.ema.take() {
            Some(flat) if flat.layout == layout => return flat.mean,
            Some(flat) => {
                for (path, mean) in flat.split() {
                    self.slots.insert(path.clone(), Slot::Ema { mean });
                }
            }
            None => {}
        }
        let pieces = offsets(layout)
            .map(|(path, start, len)| match self.slots.remove(path) {
                Some(Slot::Ema { mean }) if mean.dims()[0] == len => mean,
                // A parameter whose size changed under the same path has no usable history.
                _ => grad.clone().narrow(0, start, len),
            })
            .collect();
        Tensor::cat(pieces, 0)
    }

    /// The MA filter, which works parameter by parameter: each keeps its own window.
    fn apply_ma(&mut self, path: String, grad: Tensor<1>, settings: MaSettings) -> Tensor<1> {
        let MaSettings {
            window,
            lamb,
            warmup,
            reduction,
        } = settings;
        let slot = self.slots.entry(path).or_insert_with(|| Slot::Ma {
            history: VecDeque::with_capacity(window + 1),
            sum: grad.zeros_like(),
            pushes_since_exact_sum: 0,
        });
        let Slot::Ma {
            history,
            sum,
            pushes_since_exact_sum,
        } = slot
        else {
            // `new` starts empty and `from_state_bytes` refuses other kinds for an MA filter.
            unreachable!("an MA filter only holds MA slots")
        };
        history.push_back(grad.clone());
        let mut running = sum.clone() + grad.clone();
        if history.len() > window
            && let Some(oldest) = history.pop_front()
        {
            running = running - oldest;
        }
        *pushes_since_exact_sum += 1;
        if *pushes_since_exact_sum >= window {
            running = exact_sum(history);
            *pushes_since_exact_sum = 0;
        }
        *sum = running.clone();
        if warmup && history.len() < window {
            return grad;
        }
        let average = match reduction {
            MaReduction::Mean => running.div_scalar(history.len() as f64),
            MaReduction::Sum => running,
        };
        grad + average.mul_scalar(lamb)
    }

    /// The filter state as bytes, for a checkpoint.
    pub fn state_bytes(&self) -> Vec<u8> {
        let mut slots: BTreeMap<&String, Slot> = self
            .slots
            .iter()
            .map(|(path, slot)| (path, slot.clone()))
            .collect();
        if let Some(flat) = &self.ema {
            slots.extend(flat.split().map(|(path, mean)| (path, Slot::Ema { mean })));
        }
        let mut out = Vec::new();
        put_u64(&mut out, slots.len() as u64);
        for (path, slot) in &slots {
            put_u64(&mut out, path.len() as u64);
            out.extend_from_slice(path.as_bytes());
            match slot {
                Slot::Ema { mean } => {
                    out.push(0);
                    put_tensor(&mut out, mean);
                }
                Slot::Ma {
                    history,
                    sum,
                    pushes_since_exact_sum,
                } => {
                    out.push(1);
                    put_u64(&mut out, *pushes_since_exact_sum as u64);
                    put_tensor(&mut out, sum);
                    put_u64(&mut out, history.len() as u64);
                    for grad in history {
                        put_tensor(&mut out, grad);
                    }
                }
            }
        }
        out
    }

    /// A filter with `config` and the state `bytes` (from [`GrokFast::state_bytes`]) on `device`.
    pub fn from_state_bytes(config: GrokFastConfig, bytes: &[u8], device: &Device) -> Result<Self> {
        let mut filter = Self::new(config)?;
        let mut reader = Reader { bytes, at: 0 };
        let count = reader.u64()?;
        for _ in 0..count {
            let len = reader.len()?;
            let path = String::from_utf8(reader.take(len)?.to_vec())
                .map_err(|_| Error::Record("grokfast state: a path is not UTF-8".into()))?;
            let slot = match (reader.take(1)?[0], config) {
                (0, GrokFastConfig::Ema { .. }) => Slot::Ema {
                    mean: reader.tensor(device)?,
                },
                (1, GrokFastConfig::Ma { .. }) => {
                    let pushes_since_exact_sum = reader.len()?;
                    let sum = reader.tensor(device)?;
                    let history_len = reader.len()?;
                    let history = (0..history_len)
                        .map(|_| reader.tensor(device))
                        .collect::<Result<VecDeque<_>>>()?;
                    Slot::Ma {
                        history,
                        sum,
                        pushes_since_exact_sum,
                    }
                }
                (kind, _) => {
                    return Err(Error::CheckpointMismatch {
                        reason: format!(
                            "grokfast state of kind {kind} does not fit the {} filter",
                            config.kind()
                        ),
                    });
                }
            };
            filter.slots.insert(path, slot);
        }
        if reader.at != bytes.len() {
            return Err(Error::Record("grokfast state: trailing bytes".into()));
        }
        Ok(filter)
    }
}

fn exact_sum(history: &VecDeque<Tensor<1>>) -> Tensor<1> {
    let mut iter = history.iter();
    let first = iter
        .next()
        .expect("the window holds at least the newest gradient");
    iter.fold(first.clone(), |acc, g| acc + g.clone())
}

/// A gradient taken out of [`GradientsParams`], flattened, with what registers it back.
struct Taken {
    path: String,
    grad: Tensor<1>,
    register: Register,
}

/// Puts a flat filtered gradient back into [`GradientsParams`], in its parameter's shape.
type Register = Box<dyn FnOnce(&mut GradientsParams, Tensor<1>)>;

/// Takes every float parameter's gradient out of `grads`, in visiting order.
struct Collector<'a> {
    path: Vec<String>,
    grads: &'a mut GradientsParams,
    taken: Vec<Taken>,
}

impl ModuleVisitor for Collector<'_> {
    fn enter_module(&mut self, name: &str, _container_type: &str) {
        self.path.push(name.to_string());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<D>>) {
        let Some(grad) = self.grads.remove::<D>(param.id) else {
            return;
        };
        let dims = grad.dims();
        let id = param.id;
        self.taken.push(Taken {
            path: self.path.join("."),
            grad: grad.reshape([dims.iter().product::<usize>()]),
            register: Box::new(move |grads, flat: Tensor<1>| {
                grads.register(id, flat.reshape(dims))
            }),
        });
    }
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_tensor(out: &mut Vec<u8>, tensor: &Tensor<1>) {
    let values = crate::to_f32_vec(tensor.clone());
    put_u64(out, values.len() as u64);
    for value in values {
        out.extend_from_slice(&value.to_le_bytes());
    }
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, len: usize) -> Result<&[u8]> {
        let end = self
            .at
            .checked_add(len)
            .filter(|&end| end <= self.bytes.len())
            .ok_or_else(|| Error::Record("grokfast state is truncated".into()))?;
        let slice = &self.bytes[self.at..end];
        self.at = end;
        Ok(slice)
    }

    fn u64(&mut self) -> Result<u64> {
        let bytes = self.take(8)?;
        Ok(u64::from_le_bytes(bytes.try_into().expect("8 bytes")))
    }

    fn len(&mut self) -> Result<usize> {
        usize::try_from(self.u64()?).map_err(|_| Error::Record("grokfast state: bad length".into()))
    }

    fn tensor(&mut self, device: &Device) -> Result<Tensor<1>> {
        let len = self.len()?;
        let raw = self.take(
            len.checked_mul(4)
                .ok_or_else(|| Error::Record("grokfast state: bad tensor length".into()))?,
        )?;
        let values: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok(Tensor::from_data(TensorData::new(values, [len]), device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_device;
    use burn::module::ParamId;

    /// Two parameters of different rank, and a third that never gets a gradient.
    #[derive(Module, Debug)]
    struct Toy {
        matrix: Param<Tensor<2>>,
        vector: Param<Tensor<1>>,
        frozen: Param<Tensor<1>>,
    }

    fn toy(device: &Device) -> Toy {
        Toy {
            matrix: Param::from_data(TensorData::new(vec![0f32; 4], [2, 2]), device),
            vector: Param::from_data(TensorData::new(vec![0f32; 3], [3]), device),
            frozen: Param::from_data(TensorData::new(vec![0f32; 2], [2]), device),
        }
    }

    fn grads(toy: &Toy, matrix: [f32; 4], vector: [f32; 3], device: &Device) -> GradientsParams {
        let mut grads = GradientsParams::new();
        grads.register::<2>(
            toy.matrix.id,
            Tensor::from_data(TensorData::new(matrix.to_vec(), [2, 2]), device),
        );
        grads.register::<1>(
            toy.vector.id,
            Tensor::from_data(TensorData::new(vector.to_vec(), [3]), device),
        );
        grads
    }

    fn read<const D: usize>(grads: &GradientsParams, id: ParamId) -> Vec<f32> {
        crate::to_f32_vec(grads.get::<D>(id).unwrap())
    }

    fn assert_close(actual: &[f32], expected: &[f64]) {
        assert_eq!(actual.len(), expected.len());
        for (a, e) in actual.iter().zip(expected) {
            assert!(
                (f64::from(*a) - e).abs() < 1e-5,
                "{actual:?} vs {expected:?}"
            );
        }
    }

    /// The gradient sequence fed to every filter test: g₁, g₂, g₃, g₄ for the matrix and vector.
    const STEPS: [([f32; 4], [f32; 3]); 4] = [
        ([1.0, 2.0, 3.0, 4.0], [1.0, 0.0, -1.0]),
        ([0.0, 1.0, 0.0, 1.0], [2.0, 2.0, 2.0]),
        ([-1.0, 0.5, 2.0, 0.0], [0.0, -4.0, 1.0]),
        ([3.0, 3.0, -3.0, 1.0], [1.0, 1.0, 1.0]),
    ];

    #[test]
    fn ema_matches_a_hand_computation_over_several_steps() {
        let device = test_device();
        let model = toy(&device);
        let (alpha, lamb) = (0.5, 2.0);
        let mut filter = GrokFast::new(GrokFastConfig::Ema { alpha, lamb }).unwrap();
        // μ₁ = g₁; μₜ = α μₜ₋₁ + (1 − α) gₜ; output gₜ + λ μₜ.
        let mut mu_m: Option<Vec<f64>> = None;
        let mut mu_v: Option<Vec<f64>> = None;
        for (gm, gv) in STEPS {
            let out = filter.filter(&model, grads(&model, gm, gv, &device));
            let update = |mu: &mut Option<Vec<f64>>, g: &[f32]| -> Vec<f64> {
                let g: Vec<f64> = g.iter().map(|&x| f64::from(x)).collect();
                let prev = mu.clone().unwrap_or_else(|| g.clone());
                let next: Vec<f64> = prev
                    .iter()
                    .zip(&g)
                    .map(|(m, x)| alpha * m + (1.0 - alpha) * x)
                    .collect();
                *mu = Some(next.clone());
                g.iter().zip(&next).map(|(x, m)| x + lamb * m).collect()
            };
            assert_close(&read::<2>(&out, model.matrix.id), &update(&mut mu_m, &gm));
            assert_close(&read::<1>(&out, model.vector.id), &update(&mut mu_v, &gv));
            // The parameter without a gradient stays without one.
            assert!(out.get::<1>(model.frozen.id).is_none());
        }
        // Concretely, for the vector's first coordinate: μ = 1, 1.5, 0.75, 0.875.
        let flat = filter.ema.as_ref().unwrap();
        let (_, mean) = flat.split().find(|(path, _)| *path == "vector").unwrap();
        assert_close(&crate::to_f32_vec(mean)[..1], &[0.875]);
    }

    #[test]
    fn ema_keeps_an_average_through_a_step_without_its_gradient() {
        let device = test_device();
        let model = toy(&device);
        let (alpha, lamb) = (0.5, 2.0);
        let mut filter = GrokFast::new(GrokFastConfig::Ema { alpha, lamb }).unwrap();
        let [(m1, v1), (_, v2), (m3, v3), _] = STEPS;
        filter.filter(&model, grads(&model, m1, v1, &device));
        // Step 2: only the vector has a gradient; the matrix's average must wait, unchanged.
        let mut only_vector = GradientsParams::new();
        only_vector.register::<1>(
            model.vector.id,
            Tensor::from_data(TensorData::new(v2.to_vec(), [3]), &device),
        );
        let out = filter.filter(&model, only_vector);
        assert!(out.get::<2>(model.matrix.id).is_none());
        // Step 3: the matrix continues from μ₁ = g₁, the vector from its step-2 average.
        let out = filter.filter(&model, grads(&model, m3, v3, &device));
        let expect = |mu: &[f32], g: &[f32]| -> Vec<f64> {
            mu.iter()
                .zip(g)
                .map(|(&m, &x)| {
                    let next = alpha * f64::from(m) + (1.0 - alpha) * f64::from(x);
                    f64::from(x) + lamb * next
                })
                .collect()
        };
        assert_close(&read::<2>(&out, model.matrix.id), &expect(&m1, &m3));
        let mu_v2: Vec<f32> = v1
            .iter()
            .zip(&v2)
            .map(|(&a, &b)| (alpha as f32) * a + (1.0 - alpha as f32) * b)
            .collect();
        assert_close(&read::<1>(&out, model.vector.id), &expect(&mu_v2, &v3));
    }

    fn ma_expected(
        window: usize,
        lamb: f64,
        warmup: bool,
        sum: bool,
        history: &[Vec<f64>],
    ) -> Vec<f64> {
        let g = history.last().unwrap();
        let recent = &history[history.len().saturating_sub(window)..];
        if warmup && recent.len() < window {
            return g.clone();
        }
        let mut avg = vec![0.0; g.len()];
        for h in recent {
            for (a, x) in avg.iter_mut().zip(h) {
                *a += x;
            }
        }
        if !sum {
            avg.iter_mut().for_each(|a| *a /= recent.len() as f64);
        }
        g.iter().zip(&avg).map(|(x, a)| x + lamb * a).collect()
    }

    #[test]
    fn ma_matches_a_hand_computation_with_and_without_warmup() {
        let device = test_device();
        let model = toy(&device);
        for (warmup, reduction) in [
            (true, MaReduction::Mean),
            (false, MaReduction::Mean),
            (true, MaReduction::Sum),
        ] {
            let (window, lamb) = (2, 5.0);
            let mut filter = GrokFast::new(GrokFastConfig::Ma {
                window,
                lamb,
                warmup,
                reduction,
            })
            .unwrap();
            let mut history_m = Vec::new();
            let mut history_v = Vec::new();
            for (gm, gv) in STEPS {
                let out = filter.filter(&model, grads(&model, gm, gv, &device));
                history_m.push(gm.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
                history_v.push(gv.iter().map(|&x| f64::from(x)).collect::<Vec<_>>());
                let sum = reduction == MaReduction::Sum;
                assert_close(
                    &read::<2>(&out, model.matrix.id),
                    &ma_expected(window, lamb, warmup, sum, &history_m),
                );
                assert_close(
                    &read::<1>(&out, model.vector.id),
                    &ma_expected(window, lamb, warmup, sum, &history_v),
                );
            }
        }
    }

    #[test]
    fn state_round_trips_and_continues_identically() {
        let device = test_device();
        let model = toy(&device);
        for config in [
            GrokFastConfig::Ema {
                alpha: 0.9,
                lamb: 2.0,
            },
            GrokFastConfig::Ma {
                window: 3,
                lamb: 1.5,
                warmup: true,
                reduction: MaReduction::Mean,
            },
        ] {
            let mut original = GrokFast::new(config).unwrap();
            for (gm, gv) in &STEPS[..2] {
                original.filter(&model, grads(&model, *gm, *gv, &device));
            }
            let bytes = original.state_bytes();
            let mut restored = GrokFast::from_state_bytes(config, &bytes, &device).unwrap();
            for (gm, gv) in &STEPS[2..] {
                let a = original.filter(&model, grads(&model, *gm, *gv, &device));
                let b = restored.filter(&model, grads(&model, *gm, *gv, &device));
                assert_eq!(
                    read::<2>(&a, model.matrix.id),
                    read::<2>(&b, model.matrix.id)
                );
                assert_eq!(
                    read::<1>(&a, model.vector.id),
                    read::<1>(&b, model.vector.id)
                );
            }
            assert!(
                GrokFast::from_state_bytes(config, &bytes[..bytes.len() - 3], &device).is_err()
            );
        }
    }

    #[test]
    fn settings_are_validated_and_names_parse() {
        assert!(
            GrokFast::new(GrokFastConfig::Ema {
                alpha: 1.0,
                lamb: 2.0
            })
            .is_err()
        );
        assert!(
            GrokFast::new(GrokFastConfig::Ma {
                window: 0,
                lamb: 2.0,
                warmup: true,
                reduction: MaReduction::Mean
            })
            .is_err()
        );
        for kind in [GrokFastKind::None, GrokFastKind::Ema, GrokFastKind::Ma] {
            assert_eq!(kind.to_string().parse::<GrokFastKind>().unwrap(), kind);
        }
        assert!("sma".parse::<GrokFastKind>().is_err());
    }
}
