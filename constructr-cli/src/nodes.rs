//! `constructr nodes`: the registered nodes of a cluster.

use std::process::ExitCode;

use constructr::{Coordination, CoordinationError, Settings};

use crate::backend::{self, BackendArgs, Fallback};
use crate::output::outln;
use crate::settings::BackendFile;

pub fn run(args: &BackendArgs, file: &BackendFile, settings: Settings, json: bool) -> ExitCode {
    let resolved = match args.resolve(file, Fallback::Required) {
        Ok(r) => r,
        Err(e) => return backend::fail(&e),
    };
    let rt = match crate::runtime(&mut tokio::runtime::Builder::new_current_thread()) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async {
        let scope = settings.scope().expect("validated");
        let registry = match resolved.coordination() {
            Ok(Some(c)) => c.get_nodes(&scope).await,
            Ok(None) => {
                return backend::fail(
                    "the memory backend lives inside one process: choose --backend etcd or consul",
                );
            }
            Err(e) => return backend::fail(&e),
        };
        match registry {
            Ok(r) => {
                if json {
                    let nodes: Vec<_> = r
                        .nodes
                        .iter()
                        .map(|n| serde_json::json!({"address": n.address, "incarnation": format!("{:016x}", n.incarnation)}))
                        .collect();
                    let out = serde_json::json!({
                        "scope": scope.base(),
                        "cluster": r.epoch.map(|e| e.cluster.to_string()),
                        "epoch_version": r.epoch.map(|e| e.version),
                        "revision": r.revision,
                        "nodes": nodes,
                    });
                    outln!("{out}");
                } else {
                    outln!(
                        "{}: {} node(s){}",
                        scope.base(),
                        r.nodes.len(),
                        r.epoch
                            .map(|e| format!(", cluster {} (epoch version {})", e.cluster, e.version))
                            .unwrap_or_default()
                    );
                    for n in &r.nodes {
                        outln!("  {}  incarnation {:016x}", n.address, n.incarnation);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(CoordinationError::Timeout) => {
                // The backend's own timeout error names the endpoint, the trait's does not.
                eprintln!(
                    "error: reading the registry {} from {} ({}) timed out: no answer within --request-timeout {} from any endpoint",
                    scope.base(),
                    resolved.name(),
                    resolved.endpoints(),
                    humantime::format_duration(args.request_timeout),
                );
                ExitCode::FAILURE
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}
