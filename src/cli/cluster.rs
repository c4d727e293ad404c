//! `asterflow cluster scheduler` and `asterflow cluster executor`: the nodes of a Ballista
//! cluster that `sql` stages run on, with asterflow's functions and plan codecs registered
//! (`sql::cluster`). Each runs until Ctrl-C or SIGTERM.

use std::net::SocketAddr;

use clap::Subcommand;

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::sql::cluster::{self, ExecutorOptions, SchedulerOptions};

#[derive(Debug, Subcommand)]
pub(crate) enum Node {
    /// Plan queries and hand their tasks to executors.
    Scheduler {
        /// Where to listen for clients and executors.
        #[arg(long, default_value = "127.0.0.1:50050", value_name = "ADDR:PORT")]
        bind: SocketAddr,
        /// Seconds without a heartbeat before an executor counts as lost and its tasks move.
        #[arg(long, default_value_t = 30, value_name = "SECONDS")]
        executor_timeout: u64,
    },
    /// Run tasks for a scheduler.
    Executor {
        /// The scheduler, df://HOST:PORT.
        #[arg(long, value_name = "URL")]
        scheduler: String,
        /// Where to serve shuffle data (Arrow Flight); other nodes reach it at this address.
        #[arg(long, default_value = "127.0.0.1:50051", value_name = "ADDR:PORT")]
        bind: SocketAddr,
        /// The executor's gRPC port (task launches), on the --bind address.
        #[arg(long, default_value_t = 50052)]
        grpc_port: u16,
        /// Tasks at once [default: number of CPUs].
        #[arg(long, value_name = "N")]
        concurrent_tasks: Option<usize>,
        /// Where shuffle files go [default: a temporary directory].
        #[arg(long, value_name = "DIR")]
        work_dir: Option<String>,
        /// Seconds between heartbeats to the scheduler.
        #[arg(long, default_value_t = 5, value_name = "SECONDS")]
        heartbeat: u64,
    },
}

pub(crate) async fn cluster(node: Node) -> Result<i32, Error> {
    let bind = match &node {
        Node::Scheduler { bind, .. } | Node::Executor { bind, .. } => *bind,
    };
    if bind.ip().is_unspecified() {
        return Err(Error::Usage(format!(
            "--bind {bind}: other nodes reach this one at the address it binds; give this machine's own address, not {}",
            bind.ip()
        )));
    }
    // The executor handles Ctrl-C and SIGTERM itself: it tells the scheduler it is stopping
    // and drains its tasks.
    let handles_signals = matches!(node, Node::Executor { .. });
    let serve = async {
        match node {
            Node::Scheduler {
                bind,
                executor_timeout,
            } => {
                println!(
                    "asterflow {} cluster scheduler on df://{bind}",
                    cluster::VERSION
                );
                cluster::run_scheduler(SchedulerOptions {
                    bind,
                    executor_timeout_s: executor_timeout,
                })
                .await
            }
            Node::Executor {
                scheduler,
                bind,
                grpc_port,
                concurrent_tasks,
                work_dir,
                heartbeat,
            } => {
                println!(
                    "asterflow {} cluster executor on {bind} (grpc {grpc_port}) for {scheduler}",
                    cluster::VERSION
                );
                cluster::run_executor(ExecutorOptions {
                    scheduler,
                    bind,
                    grpc_port,
                    concurrent_tasks: concurrent_tasks.unwrap_or_else(|| {
                        std::thread::available_parallelism().map_or(2, usize::from)
                    }),
                    work_dir,
                    heartbeat_s: heartbeat,
                })
                .await
            }
        }
    };
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    if handles_signals {
        return serve.await.map(|()| exit_code::OK).map_err(Error::Usage);
    }
    tokio::select! {
        result = serve => result.map(|()| exit_code::OK).map_err(Error::Usage),
        _ = tokio::signal::ctrl_c() => Ok(exit_code::OK),
        _ = terminate.recv() => Ok(exit_code::OK),
    }
}
