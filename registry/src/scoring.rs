//! An ONNX Runtime session over an adrank model: read its signature, score rows.
//!
//! The trainer's offline evaluation and serving both score through this type, so an export bug
//! shows up in evaluation exactly as it would in production.

use std::sync::{Mutex, OnceLock, mpsc};

use ort::{
    environment::ThreadManager,
    session::{
        Session,
        builder::{GraphOptimizationLevel, SessionBuilder},
    },
    value::{TensorElementType, TensorRef, ValueType},
};

use crate::{Error, OrtConfig, Provider, Result, Signature, TensorSignature, config::GraphOptimization, runtime};

/// Session settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionOptions {
    /// Threads one run may use (ONNX Runtime's intra-op pool); 0 lets ONNX Runtime choose.
    pub intra_threads: usize,
    pub graph_optimization: GraphOptimization,
    /// Pool threads spin-wait for work after a run.
    pub intra_spinning: bool,
    /// Plan memory once per input shape (ONNX Runtime's memory pattern).
    pub memory_pattern: bool,
    /// Where the model should run; a session that cannot get it runs on the CPU.
    pub provider: Provider,
    pub cuda_device: u32,
}

impl SessionOptions {
    /// The `[onnxruntime]` section's settings.
    pub fn of(config: &OrtConfig) -> Self {
        Self {
            intra_threads: config.intra_threads,
            graph_optimization: config.graph_optimization,
            intra_spinning: config.intra_spinning,
            memory_pattern: config.memory_pattern,
            provider: config.execution_provider,
            cuda_device: config.cuda_device,
        }
    }

    /// One thread, every optimisation, on the CPU: for tests and small models.
    pub fn single_thread() -> Self {
        Self {
            intra_threads: 1,
            graph_optimization: GraphOptimization::All,
            intra_spinning: false,
            memory_pattern: false,
            provider: Provider::Cpu,
            cuda_device: 0,
        }
    }
}

/// A loaded model.
#[derive(Debug)]
pub struct ScoringSession {
    session: Session,
    signature: Signature,
    provider: Provider,
}

impl ScoringSession {
    /// Loads an ONNX model from bytes. A model asked to run on CUDA that cannot (adrank built
    /// without the `cuda` feature, a CPU-only ONNX Runtime, no device, an operator the GPU build
    /// lacks) loads on the CPU instead, with a warning naming why: serving on the CPU beats not
    /// serving. [`ScoringSession::provider`] says where it runs.
    pub fn load(onnx: &[u8], ort: &OrtConfig, options: SessionOptions) -> Result<Self> {
        let model_error = |e: ort::Error| Error::Model(e.to_string());
        let (session, provider) = match options.provider {
            Provider::Cpu => (builder(ort, &options)?.commit_from_memory(onnx).map_err(model_error)?, Provider::Cpu),
            Provider::Cuda => match cuda_session(onnx, ort, &options) {
                Ok(session) => (session, Provider::Cuda),
                Err(why) => {
                    tracing::warn!(device = options.cuda_device, %why, "the model cannot run on CUDA: running it on the CPU");
                    (builder(ort, &options)?.commit_from_memory(onnx).map_err(model_error)?, Provider::Cpu)
                }
            },
        };
        let describe = |name: &str, dtype: &ValueType| TensorSignature {
            name: name.to_string(),
            elem_type: match dtype {
                ValueType::Tensor { ty, .. } => elem_type_name(*ty),
                other => format!("{other:?}"),
            },
            shape: match dtype {
                ValueType::Tensor { shape, .. } => shape.iter().map(|&d| (d >= 0).then_some(d)).collect(),
                _ => vec![],
            },
        };
        let signature = Signature {
            inputs: session.inputs().iter().map(|i| describe(i.name(), i.dtype())).collect(),
            outputs: session.outputs().iter().map(|o| describe(o.name(), o.dtype())).collect(),
        };
        Ok(Self { session, signature, provider })
    }

    /// Where the model runs: the provider asked for, or the CPU it fell back to.
    pub fn provider(&self) -> Provider {
        self.provider
    }

    /// The model's inputs and outputs, as ONNX Runtime reads them.
    pub fn signature(&self) -> &Signature {
        &self.signature
    }

    /// Click probabilities of `rows` rows: `ids` holds `rows * id_width` ids, `dense`
    /// `rows * dense_width` numbers. The model must have adrank's signature.
    pub fn score(&mut self, rows: usize, ids: &[i64], dense: &[f32]) -> Result<Vec<f32>> {
        let width = |len: usize| len.checked_div(rows).unwrap_or(0);
        let run_error = |e: ort::Error| Error::Run(e.to_string());
        let ids = TensorRef::from_array_view(([rows, width(ids.len())], ids)).map_err(run_error)?;
        let dense = TensorRef::from_array_view(([rows, width(dense.len())], dense)).map_err(run_error)?;
        let outputs = self.session.run(ort::inputs!["ids" => ids, "dense" => dense]).map_err(run_error)?;
        let (_, scores) = outputs["pctr"].try_extract_tensor::<f32>().map_err(run_error)?;
        Ok(scores.to_vec())
    }
}

impl ScoringSession {
    /// Runs the largest id of every id column through the model, `largest` holding each id
    /// feature's name and largest id in column order: a model whose embedding tables are smaller
    /// than the spec's cardinalities fails here, naming the features, rather than on live traffic
    /// (where ids near the top are rare, so a warm-up of zeros passes).
    pub fn probe_largest_ids(&mut self, largest: &[(String, i64)], dense_width: usize) -> Result<()> {
        let dense = vec![0.0; dense_width];
        let all: Vec<i64> = largest.iter().map(|(_, id)| *id).collect();
        let Err(together) = self.score(1, &all, &dense) else { return Ok(()) };
        let mut problems = Vec::new();
        for (column, (name, id)) in largest.iter().enumerate() {
            let mut row = vec![0; largest.len()];
            row[column] = *id;
            if let Err(e) = self.score(1, &row, &dense) {
                problems.push(format!(
                    "feature `{name}` (id column {column}) has ids up to {id}, which the model cannot take: {e}"
                ));
            }
        }
        if problems.is_empty() {
            problems.push(format!("the model fails on the largest id of every feature together: {together}"));
        }
        Err(Error::Incompatible(problems))
    }
}

/// A session builder with the CPU settings every provider shares.
fn builder(ort: &OrtConfig, options: &SessionOptions) -> Result<SessionBuilder> {
    let environment = runtime::environment(ort)?;
    let model_error = |e: ort::Error| Error::Model(e.to_string());
    let mut builder = Session::builder(&environment)
        .map_err(model_error)?
        .with_optimization_level(match options.graph_optimization {
            GraphOptimization::Disable => GraphOptimizationLevel::Disable,
            GraphOptimization::Basic => GraphOptimizationLevel::Level1,
            GraphOptimization::Extended => GraphOptimizationLevel::Level2,
            GraphOptimization::All => GraphOptimizationLevel::All,
        })
        .map_err(|e| model_error(e.into()))?
        .with_intra_op_spinning(options.intra_spinning)
        .map_err(|e| model_error(e.into()))?
        .with_memory_pattern(options.memory_pattern)
        .map_err(|e| model_error(e.into()))?;
    if options.intra_threads > 0 {
        builder = builder.with_intra_threads(options.intra_threads).map_err(|e| model_error(e.into()))?;
    }
    builder.with_thread_manager(Spawner).map_err(|e| model_error(e.into()))
}

/// Starts ONNX Runtime's pool threads from one long-lived thread of their own, so that they run
/// at the process's normal priority even when the session is built on a thread that lowered its
/// own: serving loads and warms a new version at a low priority beside the serving one, and a
/// thread inherits its creator's priority. [`start_spawner`] must first run at normal priority.
struct Spawner;

/// A thread to start: what it runs, and where its handle goes.
type SpawnRequest = (Box<dyn FnOnce() + Send>, mpsc::Sender<std::io::Result<std::thread::JoinHandle<()>>>);

static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Starts the thread that starts every session's pool threads, if it is not running yet; from
/// a thread at normal priority, since it passes its priority on.
pub fn start_spawner() {
    SPAWNER.get_or_init(|| {
        let (requests, incoming) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("ort-spawner".into())
            .spawn(move || {
                for (work, reply) in incoming {
                    let _ = reply.send(std::thread::Builder::new().name("ort-pool".into()).spawn(work));
                }
            })
            .expect("the process can start a thread at startup");
        Mutex::new(requests)
    });
}

/// Lowers the calling thread's priority by `niceness` (a nice value; Linux keeps one per thread,
/// and threads it starts inherit it). Raising it back takes a privilege most servers lack: lower
/// only threads that end.
#[allow(unsafe_code)]
pub fn lower_thread_priority(niceness: i32) -> std::io::Result<()> {
    // SAFETY: setpriority takes no pointers; `who` 0 is the calling thread.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, niceness) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl ThreadManager for Spawner {
    type Thread = std::thread::JoinHandle<()>;

    fn create(&self, work: impl FnOnce() + Send + 'static) -> ort::Result<Self::Thread> {
        start_spawner();
        let (reply, handle) = mpsc::channel();
        let requests = SPAWNER.get().expect("started above").lock().expect("the spawner lock is never poisoned");
        requests.send((Box::new(work), reply)).map_err(|_| ort::Error::new("the thread spawner is gone"))?;
        drop(requests);
        handle
            .recv()
            .map_err(|_| ort::Error::new("the thread spawner is gone"))?
            .map_err(|e| ort::Error::new(format!("cannot start an ONNX Runtime pool thread: {e}")))
    }

    fn join(thread: Self::Thread) -> ort::Result<()> {
        thread.join().map_err(|_| ort::Error::new("an ONNX Runtime pool thread panicked"))
    }
}

/// A session on the CUDA execution provider, or why there is none.
#[cfg(feature = "cuda")]
fn cuda_session(onnx: &[u8], ort: &OrtConfig, options: &SessionOptions) -> std::result::Result<Session, String> {
    use ort::ep::{CUDA, ExecutionProvider};
    let library = runtime::init(ort).map_err(|e| e.to_string())?;
    if !CUDA::is_available().map_err(|e| e.to_string())? {
        return Err(format!(
            "{} is a CPU-only ONNX Runtime (use the GPU build, PyPI's onnxruntime-gpu)",
            library.path.display()
        ));
    }
    let device = i32::try_from(options.cuda_device).map_err(|_| format!("no CUDA device {}", options.cuda_device))?;
    // Registration failing is an error here, not ort's default log-and-continue: a session
    // silently on the CPU would then claim to be on CUDA.
    let provider = CUDA::default().with_device_id(device).build().error_on_failure();
    builder(ort, options)
        .map_err(|e| e.to_string())?
        .with_execution_providers([provider])
        .map_err(|e| e.to_string())?
        .commit_from_memory(onnx)
        .map_err(|e| e.to_string())
}

#[cfg(not(feature = "cuda"))]
fn cuda_session(_: &[u8], _: &OrtConfig, _: &SessionOptions) -> std::result::Result<Session, String> {
    Err("adrank was built without the `cuda` feature (cargo build --release --features cuda)".into())
}

/// ONNX's element type names (`float32`, `int64`, …), as manifests record them.
fn elem_type_name(ty: TensorElementType) -> String {
    match ty {
        TensorElementType::Float32 => "float32".into(),
        TensorElementType::Float64 => "float64".into(),
        TensorElementType::Float16 => "float16".into(),
        TensorElementType::Int64 => "int64".into(),
        TensorElementType::Int32 => "int32".into(),
        other => other.to_string(),
    }
}
