//! How a phase's inference latency and peak memory are measured, so that twins of one architecture get the
//! same figures and a teacher's memory is not a student's.
//!
//! **Latency** ([`measure_latency`], [`LATENCY_PROTOCOL`]): for each setting (batch 1 and batch 256 of the
//! task's [`Task::latency_input`], plus any [`Task::latency_whole_input`]; one thread, then all cores) the
//! network runs [`WARMUP`] untimed passes (first-touch allocation, caches, the thread pool waking up) and then
//! [`REPS`] timed passes back to back, with no time budget that could cut them short; the report keeps the
//! median and the 90th percentile. One thread means a one-thread rayon pool installed around the passes: every
//! fused op of distill-nn and gemm's parallel loops run in the installed pool, and
//! `distill_nn::ops::parallelism` asks gemm for one thread there. The process's CPU time over the wall time of
//! the timed passes is kept too ([`crate::report::Timing::cores_busy`]), so a report shows whether the
//! one-thread figure really used one core (candle's own element-wise kernels over 64 Ki elements use a pool of
//! candle's that no caller can narrow, and would show up there). A run times a seed's three phases again after
//! the last has trained, together ([`measure_latency_together`]: rounds in which they take turns), and keeps
//! those figures, so twins of one architecture are measured in the same minutes of the machine.
//!
//! **Memory** ([`PhaseMemory`], [`MEMORY_METHOD`]): glibc's `malloc` keeps freed memory (the allocator is tuned
//! never to trim, see [`crate::runtime`]), so the process's resident size only grows and every phase would
//! show the largest phase's peak. At the start of each phase [`PhaseMemory::start`] hands every free heap page
//! back to the OS (`malloc_trim(0)`), reads the resident size, and resets the kernel's high-water mark
//! (`/proc/self/clear_refs`); the phase's peak is then the high-water mark at its end. This works in-process,
//! for builtin and dynamically loaded plugins alike (both use the C library's allocator).

use std::time::Instant;

use candle_core::{Device, Tensor};

use crate::{
    report::{Latency, Timing},
    Mode, Network, Result, Task,
};

/// Untimed passes before each setting's timed ones.
pub const WARMUP: usize = 3;
/// Timed passes per setting.
pub const REPS: usize = 30;
/// The batch sizes timed.
pub const BATCHES: [usize; 2] = [1, 256];

/// How many untimed and timed passes each latency setting gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LatencyProtocol {
    /// Untimed passes first.
    pub warmup: usize,
    /// Timed passes.
    pub reps: usize,
}

impl LatencyProtocol {
    /// The protocol of reports: [`WARMUP`] untimed and [`REPS`] timed passes.
    pub const FULL: Self = Self {
        warmup: WARMUP,
        reps: REPS,
    };
    /// `--quick` runs (CI smoke runs, where a BERT teacher's 30 one-thread passes at batch 256 alone would
    /// take minutes): 1 untimed and 3 timed passes. Their reports say so; their latencies are smoke figures.
    pub const QUICK: Self = Self { warmup: 1, reps: 3 };
}

impl Default for LatencyProtocol {
    fn default() -> Self {
        Self::FULL
    }
}

/// The latency protocol in words, for reports.
pub const LATENCY_PROTOCOL: &str = "per setting (batch 1 and batch 256; 1 thread and all cores): 3 untimed \
     warm-up passes, then 30 timed passes back to back; median and 90th percentile of the 30. After a seed's \
     three phases have trained they are timed together: 3 rounds in which teacher, scratch and distilled take \
     turns, each round 3 warm-up and 10 timed passes per setting; averaged over seeds; speed-up = ratio of medians";

/// The memory method in words, for reports.
pub const MEMORY_METHOD: &str = "peak RSS = the kernel's high-water mark (VmHWM), reset at the phase's start \
     after freed heap memory was handed back to the OS (malloc_trim); 'own' = peak less the resident memory at \
     the phase's start (the data set, and for a student the teacher, are already loaded)";

/// Median and 90th percentile of `samples`, by linear interpolation between order statistics (numpy's
/// default, `np.percentile(x, [50, 90])`). NaN for no samples.
pub fn median_p90(samples: &[f64]) -> (f64, f64) {
    let mut v = samples.to_vec();
    v.sort_by(|a, b| a.total_cmp(b));
    (percentile(&v, 50.0), percentile(&v, 90.0))
}

/// The `q`-th percentile of sorted `v` (numpy's linear method).
fn percentile(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q / 100.0 * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

/// Process CPU time in seconds (all threads), where the OS gives it.
fn process_cpu_s() -> Option<f64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use std::ffi::{c_int, c_long};
        #[repr(C)]
        struct Timespec {
            tv_sec: c_long,
            tv_nsec: c_long,
        }
        extern "C" {
            fn clock_gettime(clock: c_int, ts: *mut Timespec) -> c_int;
        }
        const CLOCK_PROCESS_CPUTIME_ID: c_int = 2;
        let mut ts = Timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: clock_gettime writes one timespec, which `ts` is, and reads nothing else.
        let rc = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        (rc == 0).then_some(ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// The 1-minute load average (Linux).
fn load_avg() -> Option<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Times `net` on `x`: `p.warmup` untimed passes, then `p.reps` timed ones.
fn time_setting(
    net: &dyn Network,
    x: &Tensor,
    device: &Device,
    p: LatencyProtocol,
) -> Result<(Vec<f64>, Option<f64>)> {
    let pass = || -> Result<()> {
        let out = net.forward(x, Mode::Eval)?;
        device.synchronize()?;
        drop(out);
        Ok(())
    };
    for _ in 0..p.warmup {
        pass()?;
    }
    let (wall, cpu) = (Instant::now(), process_cpu_s());
    let mut ms = Vec::with_capacity(p.reps);
    for _ in 0..p.reps {
        let t = Instant::now();
        pass()?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let busy = cpu
        .zip(process_cpu_s())
        .map(|(a, b)| (b - a) / wall.elapsed().as_secs_f64().max(1e-9));
    Ok((ms, busy))
}

/// A one-thread rayon pool whose thread flushes subnormals to zero like the global pool's.
fn one_thread_pool() -> Result<rayon::ThreadPool> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .thread_name(|_| "distill-latency-1t".into())
        .start_handler(|_| crate::runtime::set_flush_to_zero())
        .build()
        .map_err(|e| crate::Error::msg(format!("latency: cannot start a one-thread pool: {e}")))
}

/// Inference latency of `net` on the task's inputs by the protocol of [this module](self): batch 1 and 256 (and
/// the task's whole input, if any), each at one thread and on all cores.
pub fn measure_latency(net: &dyn Network, task: &dyn Task, device: &Device) -> Result<Latency> {
    measure_latency_with(net, task, device, LatencyProtocol::FULL)
}

/// [`measure_latency`] with another number of passes (`--quick` runs: [`LatencyProtocol::QUICK`]).
pub fn measure_latency_with(
    net: &dyn Network,
    task: &dyn Task,
    device: &Device,
    protocol: LatencyProtocol,
) -> Result<Latency> {
    let load = load_avg();
    let inputs = latency_inputs(task, device)?;
    Ok(latency_of(
        time_inputs(net, &inputs, device, protocol)?,
        task,
        load,
    ))
}

/// The inputs a task is timed on: batch 1 and batch 256 of [`Task::latency_input`], then its whole input if any.
fn latency_inputs(
    task: &dyn Task,
    device: &Device,
) -> Result<Vec<(usize, Option<String>, Tensor)>> {
    let mut inputs: Vec<(usize, Option<String>, Tensor)> = Vec::new();
    for b in BATCHES {
        inputs.push((b, None, task.latency_input(b, device)?));
    }
    if let Some((name, x)) = task.latency_whole_input(device)? {
        inputs.push((x.dim(0)?, Some(name), x));
    }
    Ok(inputs)
}

/// The settings of `inputs` in timing order: (items per pass, whole input's name, threads), one thread then all
/// cores for each input.
fn settings(inputs: &[(usize, Option<String>, Tensor)]) -> Vec<(usize, Option<String>, usize)> {
    let all = rayon::current_num_threads();
    inputs
        .iter()
        .flat_map(|(b, name, _)| [1, all].map(|t| (*b, name.clone(), t)))
        .collect()
}

/// One setting's [`Timing`] from its timed passes (ms) and cores-busy figure.
fn timing(
    setting: &(usize, Option<String>, usize),
    ms: &[f64],
    warmup: usize,
    cores_busy: Option<f64>,
) -> Timing {
    let (median_ms, p90_ms) = median_p90(ms);
    Timing {
        batch: setting.0,
        input: setting.1.clone(),
        threads: setting.2,
        median_ms,
        p90_ms,
        reps: ms.len(),
        warmup,
        cores_busy,
    }
}

/// A [`Latency`] from its timings, with the batch-1 and batch-256 medians (all cores) pulled out.
fn latency_of(timings: Vec<Timing>, task: &dyn Task, load_avg: Option<f64>) -> Latency {
    let mut l = Latency {
        timings,
        unit: Some(task.latency_unit().to_string()),
        load_avg,
        ..Latency::default()
    };
    l.batch1 = l.batch(1, None).map_or(f64::NAN, |t| t.median_ms);
    l.batch256 = l.batch(256, None).map_or(f64::NAN, |t| t.median_ms);
    l
}

/// Rounds of [`measure_latency_together`].
pub const TOGETHER_ROUNDS: usize = 3;

/// The latency of several networks on one task, measured together: [`TOGETHER_ROUNDS`] rounds in which the
/// networks take turns, each round giving every setting of a network `protocol.warmup` untimed passes and its
/// share of `protocol.reps` timed ones (10 of the 30); a setting's median and 90th percentile are those of all
/// its timed passes. A run times its three phases this way after its distilled student, so a scratch and a
/// distilled twin of one architecture are timed in the same minutes of the machine (a load that comes and goes
/// touches both) instead of each after its own training.
pub fn measure_latency_together(
    nets: &[&dyn Network],
    task: &dyn Task,
    device: &Device,
    protocol: LatencyProtocol,
) -> Result<Vec<Latency>> {
    let load = load_avg();
    let inputs = latency_inputs(task, device)?;
    let round = LatencyProtocol {
        warmup: protocol.warmup,
        reps: protocol.reps.div_ceil(TOGETHER_ROUNDS),
    };
    // per network, per setting: every timed pass of every round, and each round's cores-busy figure
    let mut samples: Vec<Vec<(Vec<f64>, Vec<f64>)>> = vec![Vec::new(); nets.len()];
    for _ in 0..TOGETHER_ROUNDS {
        for (i, net) in nets.iter().enumerate() {
            let timed = time_samples(*net, &inputs, device, round)?;
            if samples[i].is_empty() {
                samples[i] = vec![(Vec::new(), Vec::new()); timed.len()];
            }
            for (k, (ms, busy)) in timed.into_iter().enumerate() {
                samples[i][k].0.extend(ms);
                samples[i][k].1.extend(busy);
            }
        }
    }
    let settings = settings(&inputs);
    Ok(samples
        .into_iter()
        .map(|per_setting| {
            let timings = per_setting
                .iter()
                .zip(&settings)
                .map(|((ms, busy), setting)| {
                    let busy =
                        (!busy.is_empty()).then(|| busy.iter().sum::<f64>() / busy.len() as f64);
                    timing(setting, ms, round.warmup, busy)
                })
                .collect();
            latency_of(timings, task, load)
        })
        .collect())
}

/// The timed passes (ms) and the cores-busy figure of each setting of [`time_inputs`], in its order.
fn time_samples(
    net: &dyn Network,
    inputs: &[(usize, Option<String>, Tensor)],
    device: &Device,
    protocol: LatencyProtocol,
) -> Result<Vec<(Vec<f64>, Option<f64>)>> {
    let pool = one_thread_pool()?;
    let mut out = Vec::new();
    for (x, (_, _, threads)) in inputs
        .iter()
        .flat_map(|(_, _, x)| [x, x])
        .zip(settings(inputs))
    {
        out.push(if threads == 1 {
            pool.install(|| time_setting(net, x, device, protocol))?
        } else {
            time_setting(net, x, device, protocol)?
        });
    }
    Ok(out)
}

/// Times `net` on each of `inputs` (items per pass, the input's name for a whole input, the tensor) by
/// `protocol`, at one thread and then on all cores: the settings of [`measure_latency`], for inputs a caller
/// chose (`distill bench --onnxruntime` times exported students on the inputs it hands ONNX Runtime).
pub fn time_inputs(
    net: &dyn Network,
    inputs: &[(usize, Option<String>, Tensor)],
    device: &Device,
    protocol: LatencyProtocol,
) -> Result<Vec<Timing>> {
    Ok(time_samples(net, inputs, device, protocol)?
        .iter()
        .zip(settings(inputs))
        .map(|((ms, busy), setting)| timing(&setting, ms, protocol.warmup, *busy))
        .collect())
}

/// Resident memory figure `key` of this process from /proc/self/status, in MiB (0 where the OS has none).
fn status_mb(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with(key)).and_then(|l| {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<f64>().ok())
            })
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// Peak resident set size of this process in MiB since the last reset (VmHWM), if the OS reports it.
pub fn peak_rss_mb() -> f64 {
    status_mb("VmHWM:")
}

/// Resident set size of this process now, in MiB (VmRSS).
pub fn rss_mb() -> f64 {
    status_mb("VmRSS:")
}

/// Hands the C allocator's free heap pages back to the OS (glibc; a no-op elsewhere).
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: malloc_trim only returns unused pages of glibc's arenas to the kernel.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Resets the peak-RSS counter (Linux), so the next [`peak_rss_mb`] covers only what follows.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// A phase's memory measurement, started by [`PhaseMemory::start`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhaseMemory {
    /// Resident memory when the phase started, after the free heap went back to the OS (MiB).
    pub start_mb: f64,
}

impl PhaseMemory {
    /// Starts a phase: frees the allocator's unused heap, resets the high-water mark, reads the resident size.
    pub fn start() -> Self {
        release_free_memory();
        reset_peak_rss();
        let start_mb = rss_mb();
        *PHASE_START.lock().unwrap_or_else(|e| e.into_inner()) = Some(start_mb);
        Self { start_mb }
    }

    /// The resident size when the latest phase of this process started, if one has.
    pub fn latest() -> Option<Self> {
        PHASE_START
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .map(|start_mb| Self { start_mb })
    }

    /// The phase's peak so far (MiB).
    pub fn peak_mb(&self) -> f64 {
        peak_rss_mb()
    }
}

/// The start of the latest phase (train_phase starts it, finish_phase reads it).
static PHASE_START: std::sync::Mutex<Option<f64>> = std::sync::Mutex::new(None);

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use candle_core::{DType, Tensor};
    use candle_nn::VarMap;

    use super::*;
    use crate::{
        task::{MetricInfo, Split, TaskInfo},
        Batch, Outputs, Rng,
    };

    #[test]
    fn median_and_p90_match_numpy() {
        // numpy: x = [7, 1, 3, 9, 5, 2, 8, 4, 6, 10]; np.percentile(x, [50, 90]) -> [5.5, 9.1]
        let (m, p) = median_p90(&[7.0, 1.0, 3.0, 9.0, 5.0, 2.0, 8.0, 4.0, 6.0, 10.0]);
        assert!(
            (m - 5.5).abs() < 1e-12 && (p - 9.1).abs() < 1e-12,
            "{m} {p}"
        );
        // odd count: np.percentile([3, 1, 2], [50, 90]) -> [2.0, 2.8]
        let (m, p) = median_p90(&[3.0, 1.0, 2.0]);
        assert!(
            (m - 2.0).abs() < 1e-12 && (p - 2.8).abs() < 1e-12,
            "{m} {p}"
        );
        // 30 timings with two outliers: x = [1.0]*20 + [2.0]*8 + [50.0, 90.0];
        // np.percentile(x, [50, 90]) -> [1.0, 2.0]: one slow pass moves neither figure
        let mut x = vec![1.0; 20];
        x.extend([2.0; 8]);
        x.extend([50.0, 90.0]);
        assert_eq!(median_p90(&x), (1.0, 2.0));
        assert!(median_p90(&[]).0.is_nan());
        assert_eq!(median_p90(&[4.0]), (4.0, 4.0));
    }

    #[test]
    fn the_protocol_text_states_the_constants() {
        assert!(LATENCY_PROTOCOL.contains(&format!("{WARMUP} untimed warm-up passes")));
        assert!(LATENCY_PROTOCOL.contains(&format!("then {REPS} timed passes")));
        assert!(
            LATENCY_PROTOCOL.contains(&format!("batch {} and batch {}", BATCHES[0], BATCHES[1]))
        );
    }

    /// A network that counts its forward passes and the pool size each ran in.
    struct Counting {
        varmap: VarMap,
        calls: AtomicUsize,
        one_thread_calls: AtomicUsize,
    }

    impl Network for Counting {
        fn forward(&self, input: &Tensor, _mode: Mode) -> Result<Outputs> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if rayon::current_num_threads() == 1 {
                self.one_thread_calls.fetch_add(1, Ordering::SeqCst);
            }
            Ok(Outputs::logits(input.sum_keepdim(1)?))
        }
        fn varmap(&self) -> &VarMap {
            &self.varmap
        }
        fn describe(&self) -> String {
            "counting".into()
        }
    }

    struct Tiny(TaskInfo, Option<usize>);

    impl Task for Tiny {
        fn info(&self) -> &TaskInfo {
            &self.0
        }
        fn len(&self, _split: Split) -> usize {
            0
        }
        fn batch(&self, _: Split, _: &[usize], _: Option<&str>, _: &mut Rng) -> Result<Batch> {
            Err(crate::Error::msg("no data"))
        }
        fn latency_unit(&self) -> &str {
            "thing"
        }
        fn latency_whole_input(&self, device: &Device) -> Result<Option<(String, Tensor)>> {
            self.1
                .map(|n| {
                    Ok((
                        "everything".to_string(),
                        Tensor::zeros((n, 3), DType::F32, device)?,
                    ))
                })
                .transpose()
        }
    }

    fn tiny(whole: Option<usize>) -> Tiny {
        Tiny(
            TaskInfo {
                dataset: "tiny".into(),
                input_shape: vec![3],
                num_classes: 1,
                metric: MetricInfo {
                    name: "accuracy".into(),
                    higher_is_better: true,
                },
            },
            whole,
        )
    }

    #[test]
    fn every_setting_gets_warm_up_and_30_timed_passes() -> Result<()> {
        let net = Counting {
            varmap: VarMap::new(),
            calls: AtomicUsize::new(0),
            one_thread_calls: AtomicUsize::new(0),
        };
        let l = measure_latency(&net, &tiny(Some(7)), &Device::Cpu)?;
        // batch 1, batch 256 and the whole input, each at 1 thread and at all cores
        let settings = 3 * 2;
        assert_eq!(l.timings.len(), settings);
        assert_eq!(net.calls.load(Ordering::SeqCst), settings * (WARMUP + REPS));
        assert!(l.timings.iter().all(|t| t.reps == 30 && t.warmup == 3));
        assert!(l
            .timings
            .iter()
            .all(|t| t.median_ms > 0.0 && t.p90_ms >= t.median_ms));
        assert_eq!(l.unit.as_deref(), Some("thing"));
        let whole: Vec<_> = l.whole_inputs().collect();
        assert_eq!(whole.len(), 2);
        assert!(whole
            .iter()
            .all(|t| t.batch == 7 && t.input.as_deref() == Some("everything")));
        // the headline figures are the all-core medians
        let all = rayon::current_num_threads();
        assert_eq!(l.batch1, l.batch(1, Some(all)).unwrap().median_ms);
        assert_eq!(l.batch256, l.batch(256, None).unwrap().median_ms);
        assert_eq!(l.batch(256, Some(1)).unwrap().threads, 1);
        Ok(())
    }

    /// Networks timed together take turns, a whole round of settings each, and every setting of every
    /// network gets the protocol's passes in every round.
    #[test]
    fn networks_timed_together_take_turns_round_by_round() -> Result<()> {
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        struct Logged(VarMap, usize, std::sync::Arc<std::sync::Mutex<Vec<usize>>>);
        impl Network for Logged {
            fn forward(&self, input: &Tensor, _mode: Mode) -> Result<Outputs> {
                self.2.lock().unwrap().push(self.1);
                Ok(Outputs::logits(input.sum_keepdim(1)?))
            }
            fn varmap(&self) -> &VarMap {
                &self.0
            }
            fn describe(&self) -> String {
                format!("net {}", self.1)
            }
        }
        let (a, b) = (
            Logged(VarMap::new(), 0, log.clone()),
            Logged(VarMap::new(), 1, log.clone()),
        );
        let ls =
            measure_latency_together(&[&a, &b], &tiny(None), &Device::Cpu, LatencyProtocol::FULL)?;
        assert_eq!(ls.len(), 2);
        // batch 1 and 256, 1 thread and all cores; each round a third of the timed passes
        let per_round = 2 * 2 * (WARMUP + REPS / TOGETHER_ROUNDS);
        let calls = log.lock().unwrap().clone();
        assert_eq!(calls.len(), 2 * TOGETHER_ROUNDS * per_round);
        for (i, block) in calls.chunks(per_round).enumerate() {
            assert!(
                block.iter().all(|&n| n == i % 2),
                "block {i} is one network's round"
            );
        }
        for l in &ls {
            assert_eq!(l.timings.len(), 4);
            assert!(l
                .timings
                .iter()
                .all(|t| t.reps == REPS && t.median_ms > 0.0));
            assert_eq!(l.batch256, l.batch(256, None).unwrap().median_ms);
        }
        Ok(())
    }

    /// Two fused 512-wide linear layers: big enough at batch 256 for gemm to split over every core it is given.
    struct Wide(VarMap, Tensor);

    impl Network for Wide {
        fn forward(&self, input: &Tensor, _mode: Mode) -> Result<Outputs> {
            let h = distill_nn::ops::linear(input, &self.1, None, true)?;
            Ok(Outputs::logits(distill_nn::ops::linear(
                &h, &self.1, None, false,
            )?))
        }
        fn varmap(&self) -> &VarMap {
            &self.0
        }
        fn describe(&self) -> String {
            "wide".into()
        }
    }

    /// The one-thread figure's CPU time is one core's: the process's CPU time over the timed passes is at
    /// most about their wall time (it would be about twice that if gemm used two threads).
    #[test]
    fn one_thread_figures_keep_one_core_busy() -> Result<()> {
        if process_cpu_s().is_none() {
            return Ok(());
        }
        let w = Tensor::randn(0f32, 0.05, (512, 512), &Device::Cpu)?;
        let mut task = tiny(None);
        task.0.input_shape = vec![512];
        let l = measure_latency(&Wide(VarMap::new(), w), &task, &Device::Cpu)?;
        let one = l.batch(256, Some(1)).unwrap();
        let busy = one.cores_busy.unwrap();
        assert!(
            busy < 1.3,
            "1 thread at batch 256 kept {busy:.2} cores busy"
        );
        Ok(())
    }

    #[test]
    fn one_thread_timings_run_inside_a_one_thread_pool() -> Result<()> {
        let net = Counting {
            varmap: VarMap::new(),
            calls: AtomicUsize::new(0),
            one_thread_calls: AtomicUsize::new(0),
        };
        let l = measure_latency(&net, &tiny(None), &Device::Cpu)?;
        let one = l.timings.iter().filter(|t| t.threads == 1).count();
        if rayon::current_num_threads() > 1 {
            assert_eq!(one, 2);
            // exactly the one-thread settings' passes saw a one-thread pool
            assert_eq!(
                net.one_thread_calls.load(Ordering::SeqCst),
                one * (WARMUP + REPS)
            );
        }
        Ok(())
    }
}
