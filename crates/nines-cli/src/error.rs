//! How errors are shown to the user.

use nines_client::ClientError;

/// tonic's `Code` Display is a prose description ("Client specified an
/// invalid argument"); users and scripts grep for the code name instead.
pub fn describe_client(e: &ClientError) -> String {
    match e {
        ClientError::Status(s) => format!("{:?}: {}", s.code(), s.message()),
        ClientError::Exhausted { attempts, last } => format!(
            "{:?}: {} (gave up after {attempts} attempts; a write may or may not have been applied)",
            last.code(),
            last.message()
        ),
        // etcdctl's words, which scripts match.
        ClientError::LeaseNotFound { .. } => "etcdserver: requested lease not found".into(),
        other => other.to_string(),
    }
}

/// A server's answer as etcdctl shows it: its message alone ("etcdserver:
/// user name not found"), for commands whose output scripts compare with
/// etcdctl's. Other client errors keep their code form.
pub fn etcd_style(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::Status(s) => anyhow::anyhow!("{}", s.message()),
        other => other.into(),
    }
}

/// Renders an error with its context chain, client errors in code form.
pub fn describe(e: &anyhow::Error) -> String {
    let mut parts = Vec::new();
    for cause in e.chain() {
        match cause.downcast_ref::<ClientError>() {
            Some(client) => {
                parts.push(describe_client(client));
                // The client error is the root cause; its source repeats it.
                break;
            }
            None => parts.push(cause.to_string()),
        }
    }
    parts.join(": ")
}

pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use anyhow::Context as _;

    #[test]
    fn client_errors_show_the_code_name() {
        let e = ClientError::Status(tonic::Status::invalid_argument("key is empty"));
        assert_eq!(describe(&e.into()), "InvalidArgument: key is empty");
    }

    #[test]
    fn context_is_kept_in_front() {
        let e: anyhow::Error = ClientError::Status(tonic::Status::not_found("no member 7")).into();
        let e = Err::<(), _>(e).context("promoting member 7").unwrap_err();
        assert_eq!(describe(&e), "promoting member 7: NotFound: no member 7");
    }
}
