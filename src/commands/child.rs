//! Running adrank's own subcommands as child processes: what `adrank demo` and the serving
//! benchmark chain together, each step the command a person would run.

use std::{net::SocketAddr, process::Stdio, time::Duration};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    process::{Child, Command},
};

use crate::config::Loaded;

/// This executable with the same config file and environment, plus `env`.
pub(crate) fn adrank(loaded: &Loaded, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    Ok(with_args(Command::new(exe), loaded, args, env))
}

/// [`adrank`] at a lower scheduling priority (`nice -n 10`, inherited by what it starts): for
/// batch work that shares a machine with serving.
pub(crate) fn adrank_niced(loaded: &Loaded, args: &[&str], env: &[(String, String)]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let mut nice = Command::new("nice");
    nice.args(["-n", "10"]).arg(exe);
    Ok(with_args(nice, loaded, args, env))
}

fn with_args(mut command: Command, loaded: &Loaded, args: &[&str], env: &[(String, String)]) -> Command {
    if let Some(file) = &loaded.file {
        command.arg("--config").arg(file);
    }
    command.args(args).envs(env.iter().map(|(k, v)| (k, v))).stdin(Stdio::null()).kill_on_drop(true);
    command
}

/// Runs `adrank <args>` to the end; fails when it does.
pub(crate) async fn run_step(loaded: &Loaded, args: &[&str], env: &[(String, String)]) -> anyhow::Result<()> {
    let status = adrank(loaded, args, env)?.status().await.with_context(|| format!("cannot run adrank {}", args[0]))?;
    if !status.success() {
        bail!("`adrank {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// `GET path` on `addr`: the status and the body (`None` when there was no answer).
pub(crate) async fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let (status, body) = exchange(addr, &format!("GET {path} HTTP/1.1\r\nhost: {addr}\r\n"), b"").await?;
    Some((status, String::from_utf8_lossy(&body).into_owned()))
}

/// `POST path` of a JSON `body` on `addr`: the status and the body.
pub(crate) async fn post(addr: SocketAddr, path: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head = format!(
        "POST {path} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        body.len()
    );
    exchange(addr, &head, body).await
}

/// One request on a fresh connection (`head` without its final blank line), read to the close.
async fn exchange(addr: SocketAddr, head: &str, body: &[u8]) -> Option<(u16, Vec<u8>)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await.ok()?;
    stream.write_all(format!("{head}connection: close\r\n\r\n").as_bytes()).await.ok()?;
    stream.write_all(body).await.ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await.ok()?;
    let status = std::str::from_utf8(response.get(9..12)?).ok()?.parse().ok()?;
    let start = response.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    Some((status, response.split_off(start)))
}

/// Starts `adrank serve --follow production` on `addr` (and gRPC on `grpc`) and waits until
/// `/readyz` says 200.
pub(crate) async fn start_server(
    loaded: &Loaded,
    (addr, grpc): (SocketAddr, Option<SocketAddr>),
    env: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Child> {
    let (listen, grpc) = (addr.to_string(), grpc.map(|g| g.to_string()));
    let mut args = vec!["serve", "--follow", "production", "--listen", &listen];
    if let Some(grpc) = &grpc {
        args.extend(["--grpc-listen", grpc]);
    }
    start_ready(loaded, &args, addr, env, timeout).await
}

/// Starts `adrank <args>`, a server listening on `addr`, and waits until `/readyz` says 200.
pub(crate) async fn start_ready(
    loaded: &Loaded,
    args: &[&str],
    addr: SocketAddr,
    env: &[(String, String)],
    timeout: Duration,
) -> anyhow::Result<Child> {
    let mut server = adrank(loaded, args, env)?.spawn().with_context(|| format!("cannot start adrank {}", args[0]))?;
    let waiting = std::time::Instant::now();
    while get(addr, "/readyz").await.map(|(s, _)| s) != Some(200) {
        if let Some(status) = server.try_wait()? {
            bail!("`adrank {}` exited before it was ready ({status})", args.join(" "));
        }
        if waiting.elapsed() > timeout {
            bail!("the server at {addr} was not ready within {} s", timeout.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(server)
}

/// A free loopback address.
pub(crate) fn free_addr() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").context("no free loopback port")?;
    Ok(probe.local_addr()?)
}

/// Stops a server with SIGTERM (it drains and flushes its impression log), SIGKILL after 30 s.
pub(crate) async fn stop(mut server: Child) -> anyhow::Result<()> {
    if let Some(pid) = server.id() {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).context("pid out of range")?);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    }
    match tokio::time::timeout(Duration::from_secs(30), server.wait()).await {
        Ok(status) => {
            let status = status?;
            if !status.success() {
                bail!("the server exited with {status}");
            }
        }
        Err(_) => {
            server.kill().await?;
            bail!("the server did not stop within 30 s of SIGTERM; killed");
        }
    }
    Ok(())
}
