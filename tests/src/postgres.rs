//! A PostgreSQL server of the tests' own: Debian's `postgresql` package
//! (which `scripts/test.sh` installs), `initdb` into a temporary
//! directory, listening on 127.0.0.1 on a free port, every statement
//! logged (`log_statement = all`), run as the `postgres` user when the
//! tests run as root (PostgreSQL refuses root), stopped when dropped.
//! Nothing here uses a PostgreSQL the machine already runs.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The login the tests' server makes, with its password.
pub const ADMIN: (&str, &str) = ("meshq_admin", "admin-secret");

/// A running PostgreSQL server.
pub struct TestPostgres {
    dir: tempfile::TempDir,
    bin: PathBuf,
    /// The port it listens on, on 127.0.0.1.
    pub port: u16,
    run_as: Option<&'static str>,
}

/// The newest PostgreSQL server's `bin` directory of Debian's layout.
fn server_bin() -> PathBuf {
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok().map(|e| e.path().join("bin")))
                .filter(|b| b.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found.pop().unwrap_or_else(|| {
        panic!(
            "no PostgreSQL server under /usr/lib/postgresql/*/bin: scripts/test.sh installs Debian's `postgresql` package"
        )
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl TestPostgres {
    /// Creates and starts a server.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let run_as = is_root().then_some("postgres");
        let pg = Self {
            bin: server_bin(),
            port: free_port(),
            run_as,
            dir,
        };
        std::fs::write(pg.dir.path().join("pw"), ADMIN.1).unwrap();
        if let Some(user) = run_as {
            let ok = Command::new("chown")
                .args(["-R", user])
                .arg(pg.dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown of the server's directory to `{user}` failed");
        }
        let data = pg.data();
        pg.run(
            "initdb",
            &[
                "-D",
                &data,
                "-U",
                ADMIN.0,
                "--pwfile",
                &pg.path("pw"),
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
                "-E",
                "UTF8",
                "--locale=C.UTF-8",
            ],
        );
        pg.start_again();
        pg
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    fn data(&self) -> String {
        self.path("data")
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let exe = self.bin.join(program);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&exe);
                c
            }
            None => Command::new(&exe),
        };
        let out = cmd
            .args(args)
            .current_dir(self.dir.path())
            .output()
            .unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts the (stopped) server again, on the same port.
    pub fn start_again(&self) {
        let options = format!(
            "-c listen_addresses=127.0.0.1 -c port={} -c unix_socket_directories={} -c log_statement=all -c fsync=off -c full_page_writes=off",
            self.port,
            self.dir.path().display()
        );
        self.run(
            "pg_ctl",
            &[
                "-D",
                &self.data(),
                "-l",
                &self.path("server.log"),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
    }

    /// Stops the server at once.
    pub fn stop(&self) {
        self.run(
            "pg_ctl",
            &["-D", &self.data(), "-m", "immediate", "-w", "stop"],
        );
    }

    /// Runs `sql` with `psql` as the admin login in `database`; its
    /// output (unaligned, tuples only).
    pub fn psql(&self, database: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                ADMIN.0,
            ])
            .args([
                "-d",
                database,
                "-v",
                "ON_ERROR_STOP=1",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .env("PGPASSWORD", ADMIN.1)
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql failed on {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Everything the server logged so far (every statement it ran).
    /// Stops the server, gives it `cert_pem` and `key_pem` for TLS, lets
    /// TCP logins in over TLS only (`hostssl`), and starts it again.
    pub fn require_tls(&self, cert_pem: &str, key_pem: &str) {
        use std::os::unix::fs::PermissionsExt;
        self.stop();
        let data = PathBuf::from(self.data());
        std::fs::write(data.join("server.crt"), cert_pem).unwrap();
        std::fs::write(data.join("server.key"), key_pem).unwrap();
        std::fs::set_permissions(
            data.join("server.key"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        if let Some(user) = self.run_as {
            for f in ["server.crt", "server.key"] {
                let ok = Command::new("chown")
                    .arg(user)
                    .arg(data.join(f))
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "chown of {f} to `{user}` failed");
            }
        }
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf).unwrap();
        text.push_str("\nssl = on\nssl_cert_file = 'server.crt'\nssl_key_file = 'server.key'\n");
        std::fs::write(&conf, text).unwrap();
        let hba = data.join("pg_hba.conf");
        let text = std::fs::read_to_string(&hba).unwrap();
        let text: Vec<String> = text
            .lines()
            .map(|l| match l.strip_prefix("host ") {
                Some(rest) => format!("hostssl {rest}"),
                None => l.to_string(),
            })
            .collect();
        std::fs::write(&hba, text.join("\n") + "\n").unwrap();
        self.start_again();
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestPostgres {
    fn drop(&mut self) {
        let pg_ctl = self.bin.join("pg_ctl");
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&pg_ctl);
                c
            }
            None => Command::new(&pg_ctl),
        };
        let _ = cmd
            .args(["-D", &self.data(), "-m", "immediate", "stop"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
