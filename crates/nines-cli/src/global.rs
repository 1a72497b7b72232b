//! Flags shared by every command, and the context built from them.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Result};
use nines_client::{Client, ClientConfig, Credentials, ReadBalance, TlsFiles};

use crate::output::Format;

#[derive(Debug, Clone, clap::Args)]
pub struct GlobalArgs {
    /// Comma-separated gRPC endpoints (host:port, or https://host:port with --cacert).
    #[arg(
        long,
        global = true,
        env = "NINES_ENDPOINTS",
        default_value = "127.0.0.1:2379"
    )]
    pub endpoints: String,
    /// Output format.
    #[arg(
        short = 'w',
        long = "write-out",
        global = true,
        env = "NINES_WRITE_OUT",
        value_enum,
        default_value = "simple"
    )]
    pub write_out: Format,
    /// Deadline of one attempt, e.g. 5s, 500ms, 1m30s.
    #[arg(long, global = true, env = "NINES_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Total time spent retrying one call before giving up.
    #[arg(long, global = true, default_value = "15s", value_parser = parse_duration)]
    pub retry_deadline: Duration,
    /// How serializable reads pick an endpoint.
    #[arg(long, global = true, value_enum, default_value = "round-robin")]
    pub read_balance: ReadBalanceArg,
    // Ids of their own: global flags reach every subcommand, and `put` and
    // others have a positional `key`.
    /// TLS (etcdctl's flag): verify the servers with this CA bundle.
    #[arg(
        long = "cacert",
        id = "tls_cacert",
        global = true,
        env = "NINES_CACERT"
    )]
    pub cacert: Option<PathBuf>,
    /// TLS client certificate, for servers run with --client-cert-auth.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "NINES_CERT",
        requires = "tls_key"
    )]
    pub cert: Option<PathBuf>,
    /// The private key of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "NINES_KEY",
        requires = "tls_cert"
    )]
    pub key: Option<PathBuf>,
    /// etcdctl's `--user name[:password]`: authenticate as this user. Without
    /// a password (and no --password), it is asked for on a terminal, or
    /// read as one line from stdin.
    #[arg(long = "user", id = "auth_user", global = true, env = "NINES_USER")]
    pub user: Option<String>,
    /// The password of --user (then --user must not include one).
    #[arg(
        long = "password",
        id = "auth_password",
        global = true,
        env = "NINES_PASSWORD",
        requires = "auth_user"
    )]
    pub password: Option<String>,
}

impl GlobalArgs {
    /// The client's TLS files: on with --cacert (or https:// endpoints,
    /// which need it).
    pub fn tls(&self) -> Result<Option<TlsFiles>> {
        let Some(ca) = &self.cacert else {
            if self.cert.is_some() {
                bail!("--cert needs --cacert: the servers' certificates are verified with it");
            }
            return Ok(None);
        };
        Ok(Some(TlsFiles {
            ca: ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone(),
        }))
    }
}

impl GlobalArgs {
    /// The credentials of --user/--password, asking for a missing password.
    pub fn credentials(&self) -> Result<Option<Credentials>> {
        let Some(user) = &self.user else {
            return Ok(None);
        };
        let (name, inline) = match user.split_once(':') {
            Some((name, password)) => (name, Some(password.to_string())),
            None => (user.as_str(), None),
        };
        if name.is_empty() {
            bail!("empty user name is not allowed");
        }
        let password = match (inline, &self.password) {
            (Some(_), Some(_)) => {
                bail!("--password cannot be used when --user includes a password (name:password)")
            }
            (Some(password), None) => password,
            (None, Some(password)) => password.clone(),
            (None, None) => read_password("Password: ")?,
        };
        Ok(Some(Credentials {
            user: name.to_string(),
            password,
        }))
    }
}

/// A password: asked for without echo on a terminal, else one line of
/// stdin (scripts pipe it in), without its line ending.
pub fn read_password(prompt: &str) -> Result<String> {
    use std::io::{BufRead, IsTerminal};
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_string())
}

/// Mirrors `nines_client::ReadBalance` so clap can list the choices in --help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReadBalanceArg {
    RoundRobin,
    LeastOutstanding,
    LowestLatency,
}

impl From<ReadBalanceArg> for ReadBalance {
    fn from(arg: ReadBalanceArg) -> Self {
        match arg {
            ReadBalanceArg::RoundRobin => ReadBalance::RoundRobin,
            ReadBalanceArg::LeastOutstanding => ReadBalance::LeastOutstanding,
            ReadBalanceArg::LowestLatency => ReadBalance::LowestLatency,
        }
    }
}

/// What every command gets: a (lazily connecting) client and the flags.
pub struct Context {
    pub client: Client,
    /// The endpoints as the user wrote them (for per-endpoint commands).
    pub endpoints: Vec<String>,
    pub format: Format,
    #[allow(dead_code)] // for commands that build their own clients (bench)
    pub config: ClientConfig,
}

impl Context {
    pub fn new(args: &GlobalArgs) -> Result<Context> {
        let endpoints = split_endpoints(&args.endpoints);
        if endpoints.is_empty() {
            bail!("no endpoints given (--endpoints or NINES_ENDPOINTS)");
        }
        let mut config = ClientConfig::new(endpoints.clone());
        config.request_timeout = args.timeout;
        config.retry_deadline = args.retry_deadline;
        config.read_balance = args.read_balance.into();
        config.tls = args.tls()?;
        config.credentials = args.credentials()?;
        if config.tls.is_none() && endpoints.iter().any(|e| e.starts_with("https://")) {
            bail!(
                "https:// endpoints need --cacert (the CA that signed the servers' certificates)"
            );
        }
        let client = Client::new(config.clone())?;
        Ok(Context {
            client,
            endpoints,
            format: args.write_out,
            config,
        })
    }
}

pub fn split_endpoints(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(str::to_string)
        .collect()
}

/// Parses Go-style durations ("5s", "250ms", "1m30s", "1.5s"); a bare number
/// means seconds, as in etcdctl's `--dial-timeout=5`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    if let Ok(secs) = s.parse::<f64>() {
        return seconds(secs, s);
    }
    let mut total = 0.0;
    let mut rest = s;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?} (e.g. 5s, 500ms, 1m30s)"))?;
        let scale = match unit {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" => 1e-6,
            "ns" => 1e-9,
            "" => return Err(format!("duration {s:?} is missing a unit after {num}")),
            _ => {
                return Err(format!(
                    "unknown unit {unit:?} in duration {s:?} (h, m, s, ms, us, ns)"
                ))
            }
        };
        total += n * scale;
        rest = tail;
    }
    seconds(total, s)
}

fn seconds(secs: f64, original: &str) -> Result<Duration, String> {
    Duration::try_from_secs_f64(secs).map_err(|_| format!("invalid duration {original:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> u128 {
        parse_duration(s).unwrap().as_millis()
    }

    #[test]
    fn durations() {
        assert_eq!(ms("5s"), 5000);
        assert_eq!(ms("500ms"), 500);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("1.5s"), 1500);
        assert_eq!(ms("2"), 2000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(parse_duration("250us").unwrap(), Duration::from_micros(250));
        assert_eq!(ms(" 3s "), 3000);
    }

    #[test]
    fn bad_durations() {
        for bad in ["", "s", "5x", "-1s", "-1", "5s3", "1..5s", "abc", "ms5"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
        assert!(parse_duration("5x").unwrap_err().contains("unknown unit"));
    }

    #[test]
    fn endpoints_are_split_and_trimmed() {
        assert_eq!(
            split_endpoints(" a:1, b:2,,c:3 "),
            vec!["a:1".to_string(), "b:2".into(), "c:3".into()]
        );
        assert!(split_endpoints(" , ").is_empty());
    }
}
