//! The object store a SQL stage's output is written through: DataFusion's Parquet writer
//! puts into it, and each file goes to the stage's output directory through a
//! [`DirectWriter`] (straight to the disk, hashed as written, placed atomically) on a thread
//! of its own, while the query goes on. Reads, lists and the rest go to the local file system.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc;

use async_trait::async_trait;
use datafusion::dataframe::DataFrame;
use datafusion::error::DataFusionError;
use datafusion::execution::object_store::ObjectStoreUrl;
use futures::stream::BoxStream;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMode, PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use crate::util::direct::DirectWriter;

/// The URL the output directory is registered under in a frame's session.
const URL: &str = "asterflow-output://stage";

/// Registers `dir` as the output store of `frame`'s session and returns the URL that writes
/// `name` there.
pub fn register(
    frame: &DataFrame,
    dir: &std::path::Path,
    name: &str,
) -> Result<String, DataFusionError> {
    let url = ObjectStoreUrl::parse(URL)?;
    let store = OutputStore::new(dir.to_owned())?;
    frame
        .task_ctx()
        .runtime_env()
        .register_object_store(url.as_ref(), Arc::new(store));
    // Refused here if the store could not name it; then each segment escaped in the URL, which
    // the writer decodes back (a `#`, `?` or `%` in a name is a file name, not URL syntax).
    Path::parse(name).map_err(|error| DataFusionError::External(error.into()))?;
    let mut target = AsRef::<url::Url>::as_ref(&url).clone();
    target
        .path_segments_mut()
        .map_err(|()| DataFusionError::Internal(format!("{URL} takes no path")))?
        .pop_if_empty()
        .extend(name.split('/'));
    Ok(target.to_string())
}

#[derive(Debug)]
struct OutputStore {
    dir: PathBuf,
    local: LocalFileSystem,
}

impl OutputStore {
    fn new(dir: PathBuf) -> Result<Self, DataFusionError> {
        let local = LocalFileSystem::new_with_prefix(&dir)
            .map_err(|error| DataFusionError::External(error.into()))?;
        Ok(Self { dir, local })
    }

    fn path(&self, location: &Path) -> PathBuf {
        self.dir.join(location.as_ref())
    }

    /// A writer for `location`, its directories made.
    fn start(&self, location: &Path, mode: &PutMode) -> object_store::Result<Upload> {
        if !matches!(mode, PutMode::Overwrite) {
            return Err(object_store::Error::NotImplemented {
                operation: format!("put with {mode:?}"),
                implementer: self.to_string(),
            });
        }
        let path = self.path(location);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|error| failed(&path, error))?;
        }
        Upload::start(path)
    }
}

impl std::fmt::Display for OutputStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "OutputStore({})", self.dir.display())
    }
}

fn failed(path: &std::path::Path, error: std::io::Error) -> object_store::Error {
    generic(std::io::Error::new(
        error.kind(),
        format!("{}: {error}", path.display()),
    ))
}

/// An error that names its file already.
fn generic(error: std::io::Error) -> object_store::Error {
    object_store::Error::Generic {
        store: "output",
        source: Box::new(error),
    }
}

#[async_trait]
impl ObjectStore for OutputStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        let mut upload = self.start(location, &opts.mode)?;
        upload.put_part(payload).await?;
        upload.complete().await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        let _ = opts;
        Ok(Box::new(self.start(location, &PutMode::Overwrite)?))
    }

    async fn get_opts(
        &self,
        location: &Path,
        options: GetOptions,
    ) -> object_store::Result<GetResult> {
        self.local.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.local.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.local.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.local.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &Path,
        to: &Path,
        options: CopyOptions,
    ) -> object_store::Result<()> {
        self.local.copy_opts(from, to, options).await
    }
}

/// What the writing thread is asked; each answer comes back on its own channel, in order.
enum Job {
    Part(PutPayload, Done),
    Finish(Done),
}

type Done = tokio::sync::oneshot::Sender<object_store::Result<()>>;
type Answer = tokio::sync::oneshot::Receiver<object_store::Result<()>>;

/// One file being written: its parts go, in the order given, to a thread that owns the
/// [`DirectWriter`]. Dropped or aborted before [`MultipartUpload::complete`], the thread
/// stops and the temp file is removed.
#[derive(Debug)]
struct Upload {
    path: PathBuf,
    jobs: Option<mpsc::Sender<Job>>,
}

impl Upload {
    fn start(path: PathBuf) -> object_store::Result<Self> {
        let writer = DirectWriter::create(&path).map_err(generic)?;
        let (jobs, received) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("output".into())
            .spawn(move || Self::write(writer, received))
            .map_err(|error| failed(&path, error))?;
        Ok(Self {
            path,
            jobs: Some(jobs),
        })
    }

    /// The writing thread: parts in order, then the finish. Ended without a finish (aborted,
    /// dropped) or failed, the writer is dropped unfinished and its temp file goes with it;
    /// after a failure every later job answers with it.
    fn write(mut writer: DirectWriter, jobs: mpsc::Receiver<Job>) {
        let mut jobs = jobs.into_iter();
        let failure = loop {
            match jobs.next() {
                None => return,
                Some(Job::Finish(done)) => {
                    let _ = done.send(writer.finish().map(|_| ()).map_err(generic));
                    return;
                }
                // Nobody waits for this part: the upload was given up, and a file with a part
                // left out must not be placed.
                Some(Job::Part(_, done)) if done.is_closed() => {
                    break "a part was given up before it was written".to_owned();
                }
                Some(Job::Part(payload, done)) => {
                    match payload.iter().try_for_each(|bytes| writer.write(bytes)) {
                        Ok(()) => {
                            let _ = done.send(Ok(()));
                        }
                        Err(error) => {
                            let message = error.to_string();
                            let _ = done.send(Err(generic(error)));
                            break message;
                        }
                    }
                }
            }
        };
        drop(writer);
        for job in jobs {
            let (Job::Part(_, done) | Job::Finish(done)) = job;
            let _ = done.send(Err(generic(std::io::Error::other(failure.clone()))));
        }
    }

    /// Hands the writing thread `job` and answers with its answer.
    fn ask(&self, job: Job, answer: Answer) -> UploadPart {
        let sent = self
            .jobs
            .as_ref()
            .is_some_and(|jobs| jobs.send(job).is_ok());
        let path = self.path.clone();
        Box::pin(async move {
            if !sent {
                return Err(failed(&path, std::io::Error::other("the upload is over")));
            }
            answer
                .await
                .map_err(|_| failed(&path, std::io::Error::other("the writer stopped")))?
        })
    }
}

#[async_trait]
impl MultipartUpload for Upload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        let (done, answer) = tokio::sync::oneshot::channel();
        self.ask(Job::Part(data, done), answer)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let finished = self.ask(Job::Finish(done), answer);
        // No part after the finish.
        self.jobs = None;
        finished.await?;
        Ok(PutResult {
            e_tag: None,
            version: None,
        })
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.jobs = None;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::dataframe::DataFrameWriteOptions;
    use datafusion::prelude::{SessionConfig, SessionContext};

    /// `frame` written as the SQL stage writes it, to `name` in `dir`.
    async fn write(frame: DataFrame, dir: &std::path::Path, name: &str) {
        let target = register(&frame, dir, name).unwrap();
        frame
            .write_parquet(
                &target,
                DataFrameWriteOptions::new().with_single_file_output(true),
                None,
            )
            .await
            .unwrap();
    }

    /// Through DataFusion's own writer, with a buffer small enough that the file goes up in
    /// many parts: the file in place reads back whole, and its digest is the one recorded.
    #[tokio::test]
    async fn a_query_written_in_parts_reads_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let config = SessionConfig::new().set_usize(
            "datafusion.execution.objectstore_writer_buffer_size",
            64 << 10,
        );
        let session = SessionContext::new_with_config(config);
        let frame = session
            .sql("SELECT v, v * 0.5 AS half FROM generate_series(1, 300000) AS t(v)")
            .await
            .unwrap();
        write(frame, dir.path(), "sub/out.parquet").await;
        let path = dir.path().join("sub/out.parquet");
        let bytes = std::fs::read(&path).unwrap();
        assert!(bytes.len() > 4 * (64 << 10), "{} bytes", bytes.len());
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(
            crate::util::direct::written_digest(&metadata).as_deref(),
            Some(blake3::hash(&bytes).to_hex().as_str())
        );
        let back = SessionContext::new();
        back.register_parquet("out", path.to_str().unwrap(), Default::default())
            .await
            .unwrap();
        let sums = back
            .sql("SELECT COUNT(*), SUM(v), SUM(half) FROM out")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let text = arrow::util::pretty::pretty_format_batches(&sums)
            .unwrap()
            .to_string();
        assert!(
            text.contains("| 300000   | 45000150000 | 22500075000.0 |"),
            "{text}"
        );
        let left: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }

    /// A file name is a name: what would be URL syntax in it is kept.
    #[tokio::test]
    async fn a_name_with_url_syntax_is_written_as_named() {
        let dir = tempfile::tempdir().unwrap();
        let session = SessionContext::new();
        let frame = session.sql("SELECT 1 AS one").await.unwrap();
        let name = "a#b?c%20d e.parquet";
        write(frame, dir.path(), name).await;
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [name]);
    }

    /// An upload aborted, or dropped unfinished, leaves no file and no temp file.
    #[tokio::test]
    async fn an_abandoned_upload_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_owned()).unwrap();
        for abort in [true, false] {
            let mut upload = store
                .put_multipart_opts(&Path::from("x.bin"), PutMultipartOptions::default())
                .await
                .unwrap();
            upload.put_part(vec![7u8; 5 << 20].into()).await.unwrap();
            if abort {
                upload.abort().await.unwrap();
            }
            drop(upload);
        }
        // The writing threads see the channel close and drop their writers.
        for _ in 0..100 {
            if std::fs::read_dir(dir.path()).unwrap().count() == 0 {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        panic!(
            "left: {:?}",
            std::fs::read_dir(dir.path()).unwrap().collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn only_overwriting_puts_are_taken() {
        let dir = tempfile::tempdir().unwrap();
        let store = OutputStore::new(dir.path().to_owned()).unwrap();
        let error = store
            .put_opts(
                &Path::from("x.bin"),
                vec![1u8].into(),
                PutOptions::from(PutMode::Create),
            )
            .await
            .unwrap_err();
        assert!(error.to_string().contains("Create"), "{error}");
        store
            .put_opts(
                &Path::from("y.bin"),
                vec![1u8, 2].into(),
                PutOptions::default(),
            )
            .await
            .unwrap();
        assert_eq!(std::fs::read(dir.path().join("y.bin")).unwrap(), [1, 2]);
    }
}
