//! `sql` stages on an Apache DataFusion Ballista cluster.
//!
//! Ballista ships plans, not sessions: the client sends a logical plan to the scheduler, the
//! scheduler plans it physically and sends each stage's plan to the executors. Every node must
//! therefore know what asterflow adds to DataFusion: the window functions of [`super::udwf`] (by
//! name, from each node's function registry), the [`PartitionWindowExec`] the physical rule puts
//! in plans (by [`PhysicalCodec`]), and the empty lake tables a query may name (by
//! [`LogicalCodec`]). [`node_state`] is the one session every node builds, so `asterflow cluster
//! scheduler` and `asterflow cluster executor` are the same binary on every node.
//!
//! Inputs reach the executors by location, never through the client: a lake on object storage
//! by its `s3://` URL (each node opens the bucket from its own `AWS_*` environment), other files
//! by a path every node shares.
//!
//! The probe function `asterflow_<version>()` (its name carries the version) answers the node
//! that ran it: a scheduler of another version cannot plan it, an executor of another version
//! cannot decode it, so [`check`] proves versions and functions in one small query.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, StringArray};
use arrow::datatypes::{DataType, Float64Type, SchemaRef};
use ballista::prelude::{SessionConfigExt, SessionContextExt};
use ballista_core::serde::{BallistaLogicalExtensionCodec, BallistaPhysicalExtensionCodec};
use datafusion::catalog::TableProvider;
use datafusion::common::{Result, TableReference, internal_datafusion_err};
use datafusion::datasource::MemTable;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::{DefaultObjectStoreRegistry, ObjectStoreRegistry};
use datafusion::execution::runtime_env::{RuntimeEnv, RuntimeEnvBuilder};
use datafusion::execution::{FunctionRegistry, SessionState, TaskContext};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::empty::EmptyExec;
use datafusion::physical_plan::execution_plan::{ChildrenPropertiesMode, ReplaceChildrenOptions};
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion_proto::logical_plan::LogicalExtensionCodec;
use datafusion_proto::physical_plan::{
    AsExecutionPlan, PhysicalExtensionCodec, PhysicalPlanDecodeContext,
    PhysicalProtoConverterExtension,
};
use datafusion_proto::protobuf::PhysicalPlanNode;
use object_store::ObjectStore;
use reqwest::Url;

use super::window::PartitionWindowExec;

/// The environment variable that sends every `sql` stage of a run to a cluster.
pub const ENV: &str = "ASTERFLOW_BALLISTA";

/// The version every node of a cluster must run.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where a stage's queries run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Engine {
    /// DataFusion in this process (the default).
    Embedded,
    /// A scheduler and an executor started in this process for the stage: Ballista's own
    /// planning and shuffles, on one machine (for trying a query out, and the tests).
    Standalone,
    /// The scheduler at `df://host:port`.
    Remote(String),
}

impl Engine {
    /// Parses `df://host:port` (the port defaults to 50050) or `standalone`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "standalone" {
            return Ok(Self::Standalone);
        }
        let url = Url::parse(text).map_err(|error| {
            format!("`{text}` is not a Ballista scheduler URL ({error}): write df://HOST:PORT, or standalone")
        })?;
        if url.scheme() != "df" || url.host_str().is_none_or(str::is_empty) {
            return Err(format!(
                "`{text}` is not a Ballista scheduler URL: write df://HOST:PORT, or standalone"
            ));
        }
        Ok(Self::Remote(format!(
            "df://{}:{}",
            url.host_str().unwrap_or_default(),
            url.port().unwrap_or(50050)
        )))
    }

    /// The engine named by the stage (`engine: {ballista: URL}`), else by [`ENV`], else the
    /// embedded one.
    pub fn resolve(stage: Option<&str>) -> Result<Self, String> {
        if let Some(url) = stage {
            return Self::parse(url);
        }
        match std::env::var(ENV) {
            Ok(url) if !url.trim().is_empty() => {
                Self::parse(&url).map_err(|error| format!("{ENV}: {error}"))
            }
            _ => Ok(Self::Embedded),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Self::Embedded => "embedded DataFusion".into(),
            Self::Standalone => "Ballista (standalone, in process)".into(),
            Self::Remote(url) => format!("Ballista at {url}"),
        }
    }
}

/// A cluster a stage's sessions connect to: a remote scheduler, or one started here.
#[derive(Debug, Clone)]
pub struct Cluster {
    url: String,
}

impl Cluster {
    /// Connects to `engine`'s cluster (starting the standalone one); `None` for the embedded
    /// engine. Connecting to a remote scheduler sends nothing: [`check`] does.
    pub async fn start(engine: &Engine, parallel: usize) -> Result<Option<Self>, String> {
        match engine {
            Engine::Embedded => Ok(None),
            Engine::Remote(url) => Ok(Some(Self { url: url.clone() })),
            Engine::Standalone => {
                let state = node_state(super::config(parallel));
                let address =
                    ballista_scheduler::standalone::new_standalone_scheduler_from_state(&state)
                        .await
                        .map_err(|error| format!("starting a standalone scheduler: {error}"))?;
                let endpoint = format!("http://localhost:{}", address.port());
                let mut tries = 0;
                let scheduler = loop {
                    match ballista_core::serde::protobuf::scheduler_grpc_client::SchedulerGrpcClient::connect(endpoint.clone()).await {
                        Ok(client) => break client,
                        Err(_) if tries < 50 => {
                            tries += 1;
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                        Err(error) => {
                            return Err(format!(
                                "the standalone scheduler at {endpoint} does not answer: {error}"
                            ));
                        }
                    }
                };
                ballista_executor::new_standalone_executor_from_state(
                    scheduler,
                    parallel.max(1),
                    &state,
                )
                .await
                .map_err(|error| format!("starting a standalone executor: {error}"))?;
                Ok(Some(Self {
                    url: format!("df://localhost:{}", address.port()),
                }))
            }
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A session whose queries run on the cluster.
    pub async fn session(&self, parallel: usize) -> Result<SessionContext, String> {
        let context =
            SessionContext::remote_with_state(&self.url, node_state(super::config(parallel)))
                .await
                .map_err(|error| format!("connecting to Ballista at {}: {error}", self.url))?;
        // Upgrading a state for Ballista resets its window functions to Ballista's own.
        for function in super::udwf::functions() {
            context.register_udwf(function);
        }
        context.register_udf(probe());
        Ok(context)
    }
}

/// The session state every node builds (client, scheduler, executors): asterflow's settings,
/// functions and physical rule, its codecs, and object stores opened on demand.
pub fn node_state(config: SessionConfig) -> SessionState {
    let mut state = super::state_with_runtime(node_settings(config), Some(runtime()));
    let _ = state.register_udf(Arc::new(probe()));
    state
}

/// `config` with a cluster's settings and asterflow's codecs.
fn node_settings(mut config: SessionConfig) -> SessionConfig {
    // An order-keeping repartition merges its inputs' sorted streams; a Ballista shuffle reads
    // them back one after another, so an order DataFusion counted on would be gone. Sort after
    // each shuffle instead.
    config.options_mut().optimizer.prefer_existing_sort = false;
    // Likewise a join that keeps its probe side's order: Ballista's planner turns a broadcast
    // join whose build side has no size estimate into a shuffled one, after DataFusion counted
    // on that order. Shuffled joins from the start, sorted after, as DataFusion plans them.
    config.options_mut().optimizer.repartition_joins = true;
    config
        .options_mut()
        .optimizer
        .hash_join_single_partition_threshold = 0;
    config
        .options_mut()
        .optimizer
        .hash_join_single_partition_threshold_rows = 0;
    // The static distributed planner: it plans with the session's physical optimizer rules
    // (asterflow's among them); the adaptive one (Ballista 55's default) replaces them with its
    // own list.
    config
        .upgrade_for_ballista()
        .with_ballista_adaptive_query_planner(false)
        .with_ballista_logical_extension_codec(Arc::new(LogicalCodec::default()))
        .with_ballista_physical_extension_codec(Arc::new(PhysicalCodec::default()))
}

/// A runtime whose object stores include any `s3://` bucket, opened from this node's `AWS_*`
/// environment when a plan first names it.
pub fn runtime() -> Arc<RuntimeEnv> {
    RuntimeEnvBuilder::new()
        .with_object_store_registry(Arc::new(Stores::default()))
        .build_arc()
        .unwrap_or_else(|_| Arc::new(RuntimeEnv::default()))
}

/// Local files, and S3 buckets opened on first use by [`crate::util::store::open`].
#[derive(Debug, Default)]
struct Stores {
    local: DefaultObjectStoreRegistry,
    buckets: Mutex<HashMap<String, Arc<dyn ObjectStore>>>,
}

impl ObjectStoreRegistry for Stores {
    fn register_store(
        &self,
        url: &Url,
        store: Arc<dyn ObjectStore>,
    ) -> Option<Arc<dyn ObjectStore>> {
        self.local.register_store(url, store)
    }

    fn get_store(&self, url: &Url) -> Result<Arc<dyn ObjectStore>> {
        if !matches!(url.scheme(), "s3" | "s3a") {
            return self.local.get_store(url);
        }
        let bucket = format!("{}://{}", url.scheme(), url.host_str().unwrap_or_default());
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(store) = buckets.get(&bucket) {
            return Ok(store.clone());
        }
        let (store, _) = crate::util::store::open(&format!("{bucket}/"))
            .map_err(DataFusionError::Configuration)?;
        buckets.insert(bucket, store.clone());
        Ok(store)
    }
}

/// Marks our own encodings, so anything else goes to Ballista's codecs unchanged.
const WINDOW_TAG: &[u8] = b"asterflow.partition-window.v1\0";
const EMPTY_TABLE_TAG: &[u8] = b"asterflow.empty-table.v1\0";

/// Ballista's physical codec, plus [`PartitionWindowExec`]: sent as the `WindowAggExec` it
/// wraps (over an empty stand-in for its input, which travels as the node's child).
#[derive(Debug, Default)]
pub struct PhysicalCodec {
    ballista: BallistaPhysicalExtensionCodec,
}

impl PhysicalExtensionCodec for PhysicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let Some(body) = buf.strip_prefix(WINDOW_TAG) else {
            return self.ballista.try_decode(buf, inputs, ctx, proto_converter);
        };
        let [input] = inputs else {
            return Err(internal_datafusion_err!(
                "a partition window has one input, got {}",
                inputs.len()
            ));
        };
        let node = PhysicalPlanNode::try_decode(body)?;
        let window = proto_converter
            .proto_to_execution_plan(&node, &PhysicalPlanDecodeContext::new(ctx, self))?
            .replace_children(vec![input.clone()], recompute())?;
        let window = window
            .downcast_ref::<WindowAggExec>()
            .ok_or_else(|| internal_datafusion_err!("a partition window decoded as another plan"))?
            .clone();
        Ok(Arc::new(PartitionWindowExec::new(Arc::new(window))))
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(window) = node.downcast_ref::<PartitionWindowExec>() else {
            return self.ballista.try_encode(node, buf, proto_converter);
        };
        let inner = window.inner();
        let stand_in: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(inner.input().schema()));
        let alone = Arc::clone(inner).replace_children(vec![stand_in], recompute())?;
        let proto = proto_converter.execution_plan_to_proto(&alone, self)?;
        buf.extend_from_slice(WINDOW_TAG);
        proto.try_encode(buf)
    }

    fn try_decode_udf(&self, name: &str, buf: &[u8]) -> Result<Arc<ScalarUDF>> {
        self.ballista.try_decode_udf(name, buf)
    }

    fn try_encode_udf(&self, node: &ScalarUDF, buf: &mut Vec<u8>) -> Result<()> {
        self.ballista.try_encode_udf(node, buf)
    }
}

/// Children replaced with their properties worked out again.
fn recompute() -> ReplaceChildrenOptions {
    ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute)
}

/// Ballista's logical codec, plus the empty table a lake dataset nobody collected is (sent as
/// its schema alone).
#[derive(Debug, Default)]
pub struct LogicalCodec {
    ballista: BallistaLogicalExtensionCodec,
}

impl LogicalExtensionCodec for LogicalCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[datafusion::logical_expr::LogicalPlan],
        ctx: &TaskContext,
    ) -> Result<datafusion::logical_expr::Extension> {
        self.ballista.try_decode(buf, inputs, ctx)
    }

    fn try_encode(
        &self,
        node: &datafusion::logical_expr::Extension,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        self.ballista.try_encode(node, buf)
    }

    fn try_decode_table_provider(
        &self,
        buf: &[u8],
        table_ref: &TableReference,
        schema: SchemaRef,
        ctx: &TaskContext,
    ) -> Result<Arc<dyn TableProvider>> {
        if buf == EMPTY_TABLE_TAG {
            return Ok(Arc::new(MemTable::try_new(schema, vec![vec![]])?));
        }
        self.ballista
            .try_decode_table_provider(buf, table_ref, schema, ctx)
    }

    fn try_encode_table_provider(
        &self,
        table_ref: &TableReference,
        node: Arc<dyn TableProvider>,
        buf: &mut Vec<u8>,
    ) -> Result<()> {
        if let Some(memory) = node.downcast_ref::<MemTable>()
            && memory
                .batches
                .iter()
                .all(|partition| partition.try_read().is_ok_and(|batches| batches.is_empty()))
        {
            buf.extend_from_slice(EMPTY_TABLE_TAG);
            return Ok(());
        }
        self.ballista
            .try_encode_table_provider(table_ref, node, buf)
    }

    fn try_decode_file_format(
        &self,
        buf: &[u8],
        ctx: &TaskContext,
    ) -> Result<Arc<dyn datafusion::datasource::file_format::FileFormatFactory>> {
        self.ballista.try_decode_file_format(buf, ctx)
    }

    fn try_encode_file_format(
        &self,
        buf: &mut Vec<u8>,
        node: Arc<dyn datafusion::datasource::file_format::FileFormatFactory>,
    ) -> Result<()> {
        self.ballista.try_encode_file_format(buf, node)
    }
}

/// The probe's name: `asterflow_`, the version (dots as underscores) and eight hex digits of
/// the blake3 of the source of asterflow's SQL functions, window plan and cluster session, so
/// two builds of one version that compute differently are told apart.
pub fn probe_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut hasher = blake3::Hasher::new();
        for source in [
            include_str!("udwf.rs"),
            include_str!("window.rs"),
            include_str!("cluster.rs"),
            include_str!("mod.rs"),
        ] {
            hasher.update(source.as_bytes());
        }
        let build = hasher.finalize().to_hex();
        format!(
            "asterflow_{}_{}",
            VERSION.replace(['.', '-', '+'], "_"),
            &build[..8]
        )
    })
    .clone()
}

/// `asterflow_<version>()`: this node's version, host and process id. Volatile, so it runs on
/// the executor that evaluates it, never folded while planning.
fn probe() -> ScalarUDF {
    #[derive(Debug, PartialEq, Eq, Hash)]
    struct Probe {
        name: String,
        signature: Signature,
    }
    impl ScalarUDFImpl for Probe {
        fn name(&self) -> &str {
            &self.name
        }
        fn signature(&self) -> &Signature {
            &self.signature
        }
        fn return_type(&self, _: &[DataType]) -> Result<DataType> {
            Ok(DataType::Utf8)
        }
        fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|name| name.trim().to_owned())
                .unwrap_or_else(|_| "?".into());
            let node = format!("{VERSION} {host}:{}", std::process::id());
            Ok(ColumnarValue::Array(Arc::new(StringArray::from(vec![
                node;
                args.number_rows
            ]))))
        }
    }
    ScalarUDF::new_from_impl(Probe {
        name: probe_name(),
        signature: Signature::nullary(Volatility::Volatile),
    })
}

/// Proves the cluster can run asterflow's queries: the scheduler answers, plans the probe
/// (so it runs this version, with the functions), and executors of this version decode and run
/// it along with a window function of [`super::udwf`].
pub async fn check(cluster: &Cluster, timeout: Duration) -> Result<(), String> {
    let url = cluster.url();
    let session = cluster.session(2).await?;
    let name = probe_name();
    let query = format!(
        "SELECT {name}() AS node, ema(v, 2) OVER (PARTITION BY k ORDER BY v) AS smoothed \
         FROM (VALUES (1.0, 1), (3.0, 1), (2.0, 2), (4.0, 2)) AS t(v, k)"
    );
    let run = async { session.sql(&query).await?.collect().await };
    let batches = match tokio::time::timeout(timeout, run).await {
        Err(_) => {
            return Err(format!(
                "the Ballista cluster at {url} did not answer a probe query within {}s: is a scheduler listening there, with an executor registered (`asterflow cluster executor --scheduler {url}`)?",
                timeout.as_secs()
            ));
        }
        Ok(Err(error)) => return Err(explain(url, &name, &error)),
        Ok(Ok(batches)) => batches,
    };
    let mut nodes: Vec<String> = Vec::new();
    let mut smoothed: Vec<f64> = Vec::new();
    for batch in &batches {
        let column = batch.column(0).as_string::<i32>();
        for row in 0..batch.num_rows() {
            let node = column.value(row).to_owned();
            if !nodes.contains(&node) {
                nodes.push(node);
            }
        }
        if let Some(values) = batch.column(1).as_primitive_opt::<Float64Type>() {
            smoothed.extend(values.iter().flatten());
        }
    }
    // ema over two values, seeded with their mean: (1 + 3) / 2 and (2 + 4) / 2.
    smoothed.sort_by(f64::total_cmp);
    if smoothed != [2.0, 3.0] {
        return Err(format!(
            "the Ballista cluster at {url} ran the probe, but `ema` gave {smoothed:?}, not [2.0, 3.0]: its executors do not run asterflow {VERSION}'s functions"
        ));
    }
    if let Some(other) = nodes
        .iter()
        .find(|node| !node.starts_with(&format!("{VERSION} ")))
    {
        return Err(format!(
            "an executor of the Ballista cluster at {url} runs asterflow {}, this is {VERSION}: run the same asterflow on every node",
            other.split(' ').next().unwrap_or("?")
        ));
    }
    Ok(())
}

/// A failed probe in the user's words.
fn explain(url: &str, probe: &str, error: &DataFusionError) -> String {
    let text = error.to_string();
    // A scheduler without the versioned probe (another asterflow) cannot decode it; a stock
    // Ballista scheduler cannot plan asterflow's window functions either.
    let unknown = |name: &str| {
        text.contains(name)
            && (text.contains("Invalid function")
                || text.contains("not found")
                || text.contains("not provided for"))
    };
    if unknown(probe) || unknown("ema") {
        return format!(
            "the Ballista scheduler at {url} does not know `{probe}`: it is not `asterflow cluster scheduler` version {VERSION} (a stock Ballista scheduler, or another asterflow version); run the same asterflow on every node ({})",
            super::error_message(error)
        );
    }
    if text.contains("transport error")
        || text.contains("Connection refused")
        || text.contains("error trying to connect")
    {
        return format!(
            "cannot reach the Ballista scheduler at {url}: {} (start one with `asterflow cluster scheduler --bind HOST:PORT`)",
            super::error_message(error)
        );
    }
    format!(
        "the Ballista cluster at {url} failed the probe query: {} (are its executors `asterflow cluster executor` version {VERSION}?)",
        super::error_message(error)
    )
}

/// Settings of `asterflow cluster scheduler`.
#[derive(Debug, Clone)]
pub struct SchedulerOptions {
    pub bind: SocketAddr,
    /// Seconds without a heartbeat before an executor counts as lost and its work moves.
    pub executor_timeout_s: u64,
}

/// Runs a scheduler that plans with asterflow's session until the process ends.
pub async fn run_scheduler(options: SchedulerOptions) -> Result<(), String> {
    use ballista_scheduler::cluster::BallistaCluster;
    use ballista_scheduler::config::SchedulerConfig;
    let config = SchedulerConfig {
        bind_host: options.bind.ip().to_string(),
        bind_port: options.bind.port(),
        external_host: options.bind.ip().to_string(),
        executor_timeout_seconds: options.executor_timeout_s,
        expire_dead_executor_interval_seconds: options.executor_timeout_s.clamp(1, 15),
        override_session_builder: Some(Arc::new(|config: SessionConfig| Ok(node_state(config)))),
        override_config_producer: Some(Arc::new(node_config)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..SchedulerConfig::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|error| format!("scheduler: {error}"))?;
    ballista_scheduler::scheduler_process::start_server(cluster, options.bind, Arc::new(config))
        .await
        .map_err(|error| format!("scheduler on {}: {error}", options.bind))
}

/// The configuration a node starts from before a client's settings arrive.
fn node_config() -> SessionConfig {
    node_settings(super::config(
        std::thread::available_parallelism().map_or(2, usize::from),
    ))
}

/// Settings of `asterflow cluster executor`.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `df://host:port`.
    pub scheduler: String,
    /// The host and Arrow Flight port this executor serves shuffle data on; the gRPC port is
    /// `grpc_port`.
    pub bind: SocketAddr,
    pub grpc_port: u16,
    /// Tasks run at once (default: the cores).
    pub concurrent_tasks: usize,
    /// Where shuffle files go (default: a temporary directory).
    pub work_dir: Option<String>,
    pub heartbeat_s: u64,
}

/// Runs an executor that registers with `options.scheduler` and runs asterflow's plans until
/// the process ends.
pub async fn run_executor(options: ExecutorOptions) -> Result<(), String> {
    use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
    let Engine::Remote(url) = Engine::parse(&options.scheduler)? else {
        return Err("--scheduler takes df://HOST:PORT".into());
    };
    let scheduler = Url::parse(&url).map_err(|error| error.to_string())?;
    let state = node_state(super::config(options.concurrent_tasks.max(1)));
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        external_host: Some(options.bind.ip().to_string()),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        scheduler_host: scheduler.host_str().unwrap_or("localhost").to_owned(),
        scheduler_port: scheduler.port().unwrap_or(50050),
        scheduler_connect_timeout_seconds: 30,
        vcores: options.concurrent_tasks.max(1),
        work_dir: options.work_dir.clone(),
        print_thread_info: false,
        executor_heartbeat_interval_seconds: options.heartbeat_s.max(1),
        override_function_registry: Some(Arc::new((&state).into())),
        override_runtime_producer: Some(Arc::new(|_: &SessionConfig| Ok(runtime()))),
        override_config_producer: Some(Arc::new(node_config)),
        override_logical_codec: Some(Arc::new(LogicalCodec::default())),
        override_physical_codec: Some(Arc::new(PhysicalCodec::default())),
        ..ExecutorProcessConfig::default()
    };
    start_executor_process(Arc::new(config))
        .await
        .map_err(|error| format!("executor: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_parse_with_clear_errors() {
        assert_eq!(Engine::parse("standalone"), Ok(Engine::Standalone));
        assert_eq!(
            Engine::parse("df://10.0.0.5"),
            Ok(Engine::Remote("df://10.0.0.5:50050".into()))
        );
        assert_eq!(
            Engine::parse("df://127.0.0.1:6000"),
            Ok(Engine::Remote("df://127.0.0.1:6000".into()))
        );
        let error = Engine::parse("http://127.0.0.1:50050").unwrap_err();
        assert!(error.contains("df://HOST:PORT"), "{error}");
        assert!(Engine::parse("nonsense").is_err());
    }

    /// A plan holding asterflow's window node survives the trip through the codec: the
    /// decoded plan is the same plan and gives the same rows.
    #[tokio::test]
    async fn the_partition_window_travels_through_the_codec() {
        use datafusion::physical_plan::{collect, displayable};
        let context = super::super::session(2);
        let query = "SELECT k, v, ema(v, 2) OVER (PARTITION BY k ORDER BY v) AS e, \
                     LAG(v) OVER (PARTITION BY k ORDER BY v) AS before \
                     FROM (VALUES (1.0, 'a'), (3.0, 'a'), (2.0, 'b'), (4.0, 'b'), (8.0, 'a')) AS t(v, k) \
                     ORDER BY k, v";
        let plan = context
            .sql(query)
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        let shown = displayable(plan.as_ref()).indent(true).to_string();
        assert!(shown.contains("PartitionWindowExec"), "{shown}");

        let codec = PhysicalCodec::default();
        let mut bytes = Vec::new();
        PhysicalPlanNode::try_from_physical_plan(plan.clone(), &codec)
            .unwrap()
            .try_encode(&mut bytes)
            .unwrap();
        let decoded = PhysicalPlanNode::try_decode(&bytes)
            .unwrap()
            .try_into_physical_plan(&context.task_ctx(), &codec)
            .unwrap();
        assert_eq!(
            displayable(decoded.as_ref()).indent(true).to_string(),
            shown
        );
        let expected = collect(plan, context.task_ctx()).await.unwrap();
        let got = collect(decoded, context.task_ctx()).await.unwrap();
        assert_eq!(got, expected);
        assert_eq!(got.iter().map(|batch| batch.num_rows()).sum::<usize>(), 5);
    }

    /// An empty lake table travels as its schema alone, and comes back empty.
    #[test]
    fn empty_tables_travel_as_their_schema() {
        let schema = crate::market::lake::schema_of(crate::market::model::Dataset::Funding);
        let table: Arc<dyn TableProvider> =
            Arc::new(MemTable::try_new(schema.clone(), vec![vec![]]).unwrap());
        let codec = LogicalCodec::default();
        let mut bytes = Vec::new();
        codec
            .try_encode_table_provider(&TableReference::bare("funding"), table, &mut bytes)
            .unwrap();
        let context = SessionContext::new();
        let back = codec
            .try_decode_table_provider(
                &bytes,
                &TableReference::bare("funding"),
                schema.clone(),
                &context.task_ctx(),
            )
            .unwrap();
        assert_eq!(back.schema(), schema);
    }

    /// What the probe's failures say: a scheduler that cannot plan the versioned probe is
    /// another version (or stock Ballista); a refused connection says how to start one.
    #[test]
    fn probe_failures_say_which_node_is_wrong() {
        let probe = probe_name();
        let url = "df://10.0.0.10:50050";
        let other = explain(
            url,
            &probe,
            &DataFusionError::Plan(format!("Invalid function '{probe}'")),
        );
        let decoded = explain(
            url,
            &probe,
            &DataFusionError::NotImplemented(format!(
                "LogicalExtensionCodec is not provided for scalar function {probe}"
            )),
        );
        assert!(
            decoded.contains("is not `asterflow cluster scheduler`"),
            "{decoded}"
        );
        let stock = explain(
            url,
            &probe,
            &DataFusionError::Plan("Invalid function 'ema'".into()),
        );
        assert!(stock.contains("a stock Ballista scheduler"), "{stock}");
        assert!(
            other.contains("is not `asterflow cluster scheduler` version") && other.contains(url),
            "{other}"
        );
        let down = explain(
            url,
            &probe,
            &DataFusionError::External("transport error: Connection refused".into()),
        );
        assert!(
            down.starts_with(&format!("cannot reach the Ballista scheduler at {url}"))
                && down.contains("asterflow cluster scheduler --bind"),
            "{down}"
        );
        let failed = explain(url, &probe, &DataFusionError::Execution("boom".into()));
        assert!(
            failed.contains("failed the probe query") && failed.contains("boom"),
            "{failed}"
        );
    }

    #[test]
    fn the_probe_name_carries_the_version() {
        let name = probe_name();
        assert!(name.starts_with("asterflow_"));
        assert!(!name.contains('.'));
        let version = format!("asterflow_{}_", VERSION.replace('.', "_"));
        assert!(name.starts_with(&version), "{name}");
        assert_eq!(name.len(), version.len() + 8, "{name}");
        assert_eq!(name, probe_name(), "the same on every call");
    }
}
