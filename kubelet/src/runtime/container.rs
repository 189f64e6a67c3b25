//! Containers and their tasks: create (snapshot, container record, task), start, wait,
//! signal, and tear down so nothing is left behind (task, container, snapshot).

use std::collections::HashMap;
use std::path::PathBuf;

use containerd_client::services::v1::container::Runtime as ContainerRuntime;
use containerd_client::services::v1::containers_client::ContainersClient;
use containerd_client::services::v1::snapshots::PrepareSnapshotRequest;
use containerd_client::services::v1::snapshots::snapshots_client::SnapshotsClient;
use containerd_client::services::v1::tasks_client::TasksClient;
use containerd_client::services::v1::{
    Container, CreateContainerRequest, CreateTaskRequest, DeleteContainerRequest,
    DeleteTaskRequest, GetRequest, KillRequest, ListContainersRequest, StartRequest, WaitRequest,
};
use containerd_client::tonic::Code;
use containerd_client::types::v1::Status as ProcStatus;

use super::image::ResolvedImage;
use super::spec::ContainerSpec;
use super::{RUNC_RUNTIME, Runtime, RuntimeError, SNAPSHOTTER, call};

const SPEC_TYPE: &str = "types.containerd.io/opencontainers/runtime-spec/1/Spec";

/// A container to create.
pub struct NewContainer<'a> {
    pub id: String,
    pub image: &'a ResolvedImage,
    pub labels: HashMap<String, String>,
    pub spec: ContainerSpec,
    /// stdout and stderr go here (containerd's shim appends to it).
    pub log_path: PathBuf,
}

/// A container record in containerd.
#[derive(Debug, Clone)]
pub struct ContainerRecord {
    pub id: String,
    pub labels: HashMap<String, String>,
    pub image: String,
}

/// The state of a container's task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskState {
    pub pid: u32,
    pub running: bool,
    pub exit_status: u32,
    pub exited_at: Option<i64>,
}

impl Runtime {
    /// Creates the container and its task (not started); returns the task's pid.
    pub async fn create_container(&self, c: &NewContainer<'_>) -> Result<u32, RuntimeError> {
        // Until the container record refers to the new snapshot, only a lease keeps
        // containerd's garbage collector from removing it (as containerd's own client
        // does).
        let lease = self.lease().await?;
        let r = self.create_container_leased(c, &lease).await;
        self.drop_lease(&lease).await;
        r
    }

    async fn create_container_leased(
        &self,
        c: &NewContainer<'_>,
        lease: &str,
    ) -> Result<u32, RuntimeError> {
        let mut snaps = SnapshotsClient::new(self.channel());
        let request = || {
            self.leased(
                PrepareSnapshotRequest {
                    snapshotter: SNAPSHOTTER.into(),
                    key: c.id.clone(),
                    parent: c.image.top_chain_id.clone(),
                    labels: HashMap::new(),
                },
                lease,
            )
        };
        let prepared = snaps.prepare(request()).await;
        let mounts = match prepared {
            Ok(r) => r.into_inner().mounts,
            Err(s) if s.code() == Code::AlreadyExists => {
                // Left by an earlier attempt that failed half-way: start clean.
                self.remove_snapshot(&c.id).await;
                snaps
                    .prepare(request())
                    .await
                    .map_err(call(format!("prepare the rootfs of {}", c.id)))?
                    .into_inner()
                    .mounts
            }
            Err(s) => return Err(call(format!("prepare the rootfs of {}", c.id))(s)),
        };
        let spec = serde_json::to_vec(&c.spec.to_json()).expect("json");
        let record = Container {
            id: c.id.clone(),
            labels: c.labels.clone(),
            image: c.image.name.clone(),
            runtime: Some(ContainerRuntime {
                name: RUNC_RUNTIME.into(),
                options: None,
            }),
            spec: Some(prost_types::Any {
                type_url: SPEC_TYPE.into(),
                value: spec,
            }),
            snapshotter: SNAPSHOTTER.into(),
            snapshot_key: c.id.clone(),
            created_at: None,
            updated_at: None,
            extensions: HashMap::new(),
            sandbox: String::new(),
        };
        let mut containers = ContainersClient::new(self.channel());
        if let Err(s) = containers
            .create(self.leased(
                CreateContainerRequest {
                    container: Some(record),
                },
                lease,
            ))
            .await
        {
            self.remove_snapshot(&c.id).await;
            return Err(call(format!("create container {}", c.id))(s));
        }
        if let Some(dir) = c.log_path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        let uri = format!("file://{}", c.log_path.display());
        let mut tasks = TasksClient::new(self.channel());
        let created = tasks
            .create(self.req(CreateTaskRequest {
                container_id: c.id.clone(),
                rootfs: mounts,
                stdin: String::new(),
                stdout: uri.clone(),
                stderr: uri,
                terminal: false,
                checkpoint: None,
                options: None,
                runtime_path: String::new(),
            }))
            .await;
        match created {
            Ok(r) => Ok(r.into_inner().pid),
            Err(s) => {
                self.remove_container(&c.id).await;
                Err(call(format!("create the task of {}", c.id))(s))
            }
        }
    }

    pub async fn start_task(&self, id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(call(format!("start {id}")))?;
        Ok(())
    }

    /// Waits for the task to exit; returns its exit status.
    pub async fn wait_task(&self, id: &str) -> Result<u32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        let r = tasks
            .wait(self.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await
            .map_err(call(format!("wait for {id}")))?;
        Ok(r.into_inner().exit_status)
    }

    /// Sends `signal` to the task (to every process in it with `all`). A task that is
    /// already gone is not an error.
    pub async fn kill_task(&self, id: &str, signal: u32, all: bool) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        match tasks
            .kill(self.req(KillRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
                signal,
                all,
            }))
            .await
        {
            Ok(_) => Ok(()),
            Err(s) if s.code() == Code::NotFound => Ok(()),
            Err(s) => Err(call(format!("signal {id}"))(s)),
        }
    }

    /// The task of container `id`, or None if it has none.
    pub async fn task_state(&self, id: &str) -> Result<Option<TaskState>, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        let r = tasks
            .get(self.req(GetRequest {
                container_id: id.to_string(),
                exec_id: String::new(),
            }))
            .await;
        let p = match r {
            Ok(r) => r.into_inner().process,
            Err(s) if s.code() == Code::NotFound => return Ok(None),
            Err(s) => return Err(call(format!("look up the task of {id}"))(s)),
        };
        Ok(p.map(|p| TaskState {
            pid: p.pid,
            running: p.status == ProcStatus::Running as i32
                || p.status == ProcStatus::Created as i32,
            exit_status: p.exit_status,
            exited_at: p.exited_at.map(|t| t.seconds),
        }))
    }

    /// Deletes the task (which must have exited, or is killed first), the container and
    /// its snapshot. Whatever is already gone is skipped.
    pub async fn remove_container(&self, id: &str) {
        if let Ok(Some(t)) = self.task_state(id).await
            && t.running
        {
            let _ = self.kill_task(id, 9, true).await;
            let _ =
                tokio::time::timeout(std::time::Duration::from_secs(10), self.wait_task(id)).await;
        }
        let mut tasks = TasksClient::new(self.channel());
        let _ = tasks
            .delete(self.req(DeleteTaskRequest {
                container_id: id.to_string(),
            }))
            .await;
        let mut containers = ContainersClient::new(self.channel());
        let _ = containers
            .delete(self.req(DeleteContainerRequest { id: id.to_string() }))
            .await;
        self.remove_snapshot(id).await;
    }

    /// Every container in this namespace.
    pub async fn list_containers(&self) -> Result<Vec<ContainerRecord>, RuntimeError> {
        let mut containers = ContainersClient::new(self.channel());
        let r = containers
            .list(self.req(ListContainersRequest { filters: vec![] }))
            .await
            .map_err(call("list containers"))?;
        Ok(r.into_inner()
            .containers
            .into_iter()
            .map(|c| ContainerRecord {
                id: c.id,
                labels: c.labels,
                image: c.image,
            })
            .collect())
    }
}

/// Our ends of an exec'd process's standard streams (FIFOs the shim opens too).
pub struct ExecIo {
    pub stdin: Option<tokio::net::unix::pipe::Sender>,
    pub stdout: tokio::net::unix::pipe::Receiver,
    pub stderr: tokio::net::unix::pipe::Receiver,
}

fn mkfifo(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(std::io::Error::other)?;
    // SAFETY: mkfifo with a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

impl Runtime {
    /// Prepares `args` to run in container `id`'s task as process `exec_id`, with the
    /// container's environment, user and working directory; stdio through FIFOs in
    /// `dir`. Start it with `start_exec`.
    pub async fn exec(
        &self,
        id: &str,
        exec_id: &str,
        args: Vec<String>,
        stdin: bool,
        dir: &std::path::Path,
    ) -> Result<ExecIo, RuntimeError> {
        use containerd_client::services::v1::{ExecProcessRequest, GetContainerRequest};
        let mut containers = ContainersClient::new(self.channel());
        let c = containers
            .get(self.req(GetContainerRequest { id: id.to_string() }))
            .await
            .map_err(call(format!("look up container {id}")))?
            .into_inner()
            .container
            .ok_or_else(|| RuntimeError::Image {
                image: id.to_string(),
                message: "container record without content".into(),
            })?;
        let spec: serde_json::Value =
            serde_json::from_slice(&c.spec.map(|s| s.value).unwrap_or_default()).map_err(|e| {
                RuntimeError::Image {
                    image: id.to_string(),
                    message: format!("container spec is not JSON: {e}"),
                }
            })?;
        let mut process = spec["process"].clone();
        process["args"] = serde_json::json!(args);
        process["terminal"] = serde_json::json!(false);
        std::fs::create_dir_all(dir).map_err(super::io_err("create", dir))?;
        let (i, o, e) = (dir.join("stdin"), dir.join("stdout"), dir.join("stderr"));
        for p in [&o, &e] {
            mkfifo(p).map_err(super::io_err("make a FIFO", p))?;
        }
        // Opened read-write, our ends never see a premature end of file while the shim
        // has not opened its side yet.
        let open_rx = |p: &std::path::Path| {
            tokio::net::unix::pipe::OpenOptions::new()
                .read_write(true)
                .open_receiver(p)
                .map_err(super::io_err("open", p))
        };
        let stdout = open_rx(&o)?;
        let stderr = open_rx(&e)?;
        let stdin_tx = if stdin {
            mkfifo(&i).map_err(super::io_err("make a FIFO", &i))?;
            Some(
                tokio::net::unix::pipe::OpenOptions::new()
                    .read_write(true)
                    .open_sender(&i)
                    .map_err(super::io_err("open", &i))?,
            )
        } else {
            None
        };
        let mut tasks = TasksClient::new(self.channel());
        tasks
            .exec(self.req(ExecProcessRequest {
                container_id: id.to_string(),
                stdin: if stdin {
                    i.display().to_string()
                } else {
                    String::new()
                },
                stdout: o.display().to_string(),
                stderr: e.display().to_string(),
                terminal: false,
                spec: Some(prost_types::Any {
                    type_url: "types.containerd.io/opencontainers/runtime-spec/1/Process".into(),
                    value: serde_json::to_vec(&process).expect("json"),
                }),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(call(format!("exec in {id}")))?;
        Ok(ExecIo {
            stdin: stdin_tx,
            stdout,
            stderr,
        })
    }

    pub async fn start_exec(&self, id: &str, exec_id: &str) -> Result<(), RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        tasks
            .start(self.req(StartRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(call(format!("start the exec in {id}")))?;
        Ok(())
    }

    pub async fn wait_exec(&self, id: &str, exec_id: &str) -> Result<u32, RuntimeError> {
        let mut tasks = TasksClient::new(self.channel());
        let r = tasks
            .wait(self.req(WaitRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await
            .map_err(call(format!("wait for the exec in {id}")))?;
        Ok(r.into_inner().exit_status)
    }

    pub async fn delete_exec(&self, id: &str, exec_id: &str) {
        use containerd_client::services::v1::DeleteProcessRequest;
        let mut tasks = TasksClient::new(self.channel());
        let _ = tasks
            .delete_process(self.req(DeleteProcessRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
            }))
            .await;
    }
}

impl Runtime {
    /// Closes the stdin of exec `exec_id` (the shim keeps the FIFO open otherwise).
    pub async fn close_stdin(&self, id: &str, exec_id: &str) {
        use containerd_client::services::v1::CloseIoRequest;
        let mut tasks = TasksClient::new(self.channel());
        let _ = tasks
            .close_io(self.req(CloseIoRequest {
                container_id: id.to_string(),
                exec_id: exec_id.to_string(),
                stdin: true,
            }))
            .await;
    }
}
