//! Bearer-token authentication and role checks.
//!
//! Every route except `/health` and `/ready` (and `/metrics` when configured open) needs
//! `Authorization: Bearer <token>`; the WebSocket handshake also accepts `?token=`, because
//! browsers cannot set headers on a WebSocket. Roles nest: `admin` ⊃ `user` ⊃ `read`.
//!
//! Tokens are kept as SHA-256 digests and a presented token is compared, digest to digest, in
//! constant time against *every* configured token, so neither timing nor an early exit tells
//! an attacker how much of a guess was right. Tokens never reach a log line.
//!
//! With no token configured, the node generates an admin token on first start and keeps it in
//! `<data_dir>/admin-token` (mode 0600), so a later start reuses it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use grokforge_config::{Role, TokenSettings};
use rand::RngCore;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use warp::Filter;
use warp::filters::BoxedFilter;
use warp::http::StatusCode;

use crate::problem::{Problem, Rejected};
use crate::routes::Access;

/// File name of the generated admin token inside the data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin-token";

/// Who made a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
}

impl Principal {
    pub fn may(&self, need: Role) -> bool {
        allows(self.role, need)
    }
}

/// Whether `role` may do what needs `need`.
pub fn allows(role: Role, need: Role) -> bool {
    match need {
        Role::Read => true,
        Role::User => matches!(role, Role::Admin | Role::User),
        Role::Admin => role == Role::Admin,
    }
}

pub fn role_name(role: Role) -> &'static str {
    match role {
        Role::Admin => "admin",
        Role::User => "user",
        Role::Read => "read",
    }
}

/// The tokens this node accepts.
pub struct Tokens {
    digests: Vec<([u8; 32], Role)>,
    /// Serve `/metrics` without a token.
    pub metrics_open: bool,
}

impl Tokens {
    pub fn new(tokens: &[TokenSettings], metrics_open: bool) -> Tokens {
        Tokens {
            digests: tokens.iter().map(|t| (digest(&t.token), t.role)).collect(),
            metrics_open,
        }
    }

    /// Also accepts the token whose SHA-256 is `sha256` (as the cluster's database keeps it).
    pub fn with_digest(mut self, sha256: [u8; 32], role: Role) -> Tokens {
        self.digests.push((sha256, role));
        self
    }

    /// The role of `presented`, if it is one of ours. Compares against every token, always.
    pub fn authenticate(&self, presented: &str) -> Option<Role> {
        let presented = digest(presented);
        let mut found = None;
        for (known, role) in &self.digests {
            if bool::from(known.ct_eq(&presented)) {
                found = Some(*role);
            }
        }
        found
    }
}

pub fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[derive(Debug, thiserror::Error)]
#[error("admin token file {path}: {error}")]
pub struct TokenFileError {
    pub path: PathBuf,
    pub error: std::io::Error,
}

/// The admin token of a node with no configured tokens: read from `<data_dir>/admin-token`, or
/// generated and written there (mode 0600, atomically) on first start. `generated` says which.
pub struct AdminToken {
    pub token: String,
    pub path: PathBuf,
    pub generated: bool,
}

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminToken")
            .field("token", &"<redacted>")
            .field("path", &self.path)
            .field("generated", &self.generated)
            .finish()
    }
}

pub fn load_or_generate_admin_token(data_dir: &Path) -> Result<AdminToken, TokenFileError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};

    let path = data_dir.join(ADMIN_TOKEN_FILE);
    let fail = |error| TokenFileError {
        path: path.clone(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(contents) => {
            let token = contents.trim().to_string();
            if token.is_empty() {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "the file is empty; delete it to generate a new token",
                )));
            }
            // Someone widened the permissions: narrow them again rather than serve a token
            // that every local user can read.
            let mode = std::fs::metadata(&path).map_err(fail)?.permissions().mode();
            if mode & 0o077 != 0 {
                tracing::warn!(path = %path.display(), mode = format!("{mode:o}"), "admin token file was readable by others; setting mode 0600");
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
                    .map_err(fail)?;
            }
            return Ok(AdminToken {
                token,
                path,
                generated: false,
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(e)),
    }

    let mut bytes = [0u8; 32];
    // ThreadRng is a CSPRNG seeded from the operating system.
    rand::rng().fill_bytes(&mut bytes);
    let token = format!(
        "gf_{}",
        bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()
    );
    std::fs::create_dir_all(data_dir).map_err(fail)?;
    let temp = data_dir.join(format!(".{ADMIN_TOKEN_FILE}.{}.tmp", std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temp)?;
        writeln!(file, "{token}")?;
        file.sync_all()?;
        std::fs::rename(&temp, &path)?;
        std::fs::File::open(data_dir)?.sync_all()
    };
    if let Err(error) = write() {
        let _ = std::fs::remove_file(&temp);
        return Err(fail(error));
    }
    Ok(AdminToken {
        token,
        path,
        generated: true,
    })
}

/// The bearer token of a request: the `Authorization` header, else the `?token=` value.
fn presented_token(header: Option<&str>, query_token: Option<&str>) -> Option<String> {
    if let Some(value) = header {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_string());
    }
    query_token.map(str::to_string)
}

/// The `?token=` of the WebSocket handshake (warp percent-decodes it); other keys are ignored.
#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

fn unauthorized(detail: &str) -> Problem {
    Problem::new(StatusCode::UNAUTHORIZED, detail)
        .with_header("www-authenticate", "Bearer realm=\"grokforge\"")
}

/// Checks a request's token and role; `need` is the least role the route requires.
pub fn check(
    tokens: &Tokens,
    header: Option<&str>,
    query_token: Option<&str>,
    need: Role,
) -> Result<Principal, Problem> {
    let Some(token) = presented_token(header, query_token) else {
        return Err(unauthorized(
            "this route needs a bearer token: `Authorization: Bearer <token>`",
        ));
    };
    let Some(role) = tokens.authenticate(&token) else {
        return Err(unauthorized("the token is not valid"));
    };
    if !allows(role, need) {
        return Err(Problem::new(
            StatusCode::FORBIDDEN,
            format!(
                "this needs the {} role; the token has {}",
                role_name(need),
                role_name(role)
            ),
        )
        .with("required_role", role_name(need)));
    }
    Ok(Principal { role })
}

/// A filter that lets a request through with its [`Principal`] when its header carries a token
/// of at least `need`, and rejects it with a 401/403 problem otherwise.
pub fn require(
    tokens: Arc<Tokens>,
    need: Role,
) -> impl Filter<Extract = (Principal,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let tokens = tokens.clone();
        async move {
            check(&tokens, header.as_deref(), None, need)
                .map_err(|problem| warp::reject::custom(Rejected(problem)))
        }
    })
}

/// Like [`require`], also accepting the token as `?token=` (for the WebSocket handshake).
pub fn require_header_or_query(
    tokens: Arc<Tokens>,
    need: Role,
) -> impl Filter<Extract = (Principal,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization")
        .and(warp::query::<TokenQuery>())
        .and_then(move |header: Option<String>, query: TokenQuery| {
            let tokens = tokens.clone();
            async move {
                check(&tokens, header.as_deref(), query.token.as_deref(), need)
                    .map_err(|problem| warp::reject::custom(Rejected(problem)))
            }
        })
}

/// `/metrics`: open when configured so, else a read token.
fn metrics_access(
    tokens: Arc<Tokens>,
) -> impl Filter<Extract = (Option<Principal>,), Error = warp::Rejection> + Clone {
    warp::header::optional::<String>("authorization").and_then(move |header: Option<String>| {
        let tokens = tokens.clone();
        async move {
            if tokens.metrics_open {
                return Ok(None);
            }
            check(&tokens, header.as_deref(), None, Role::Read)
                .map(Some)
                .map_err(|problem| warp::reject::custom(Rejected(problem)))
        }
    })
}

/// The check a route's [`Access`] asks for: the caller, or `None` where no token is needed.
///
/// Boxed, because each kind of access is a filter of its own type; only the one route whose
/// method and path matched gets this far, so the indirection costs one call per request.
pub fn guard(tokens: &Arc<Tokens>, access: Access) -> BoxedFilter<(Option<Principal>,)> {
    let tokens = tokens.clone();
    match access {
        Access::Public => warp::any().map(|| None).boxed(),
        Access::Token(role) => require(tokens, role).map(Some).boxed(),
        Access::TokenOrQuery(role) => require_header_or_query(tokens, role).map(Some).boxed(),
        Access::Scrape => metrics_access(tokens).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            &[
                TokenSettings {
                    token: "admin-secret".into(),
                    role: Role::Admin,
                },
                TokenSettings {
                    token: "user-secret".into(),
                    role: Role::User,
                },
                TokenSettings {
                    token: "read-secret".into(),
                    role: Role::Read,
                },
            ],
            false,
        )
    }

    #[test]
    fn roles_nest() {
        for (role, read, user, admin) in [
            (Role::Admin, true, true, true),
            (Role::User, true, true, false),
            (Role::Read, true, false, false),
        ] {
            assert_eq!(allows(role, Role::Read), read);
            assert_eq!(allows(role, Role::User), user);
            assert_eq!(allows(role, Role::Admin), admin);
        }
    }

    #[test]
    fn tokens_authenticate_to_their_role_only() {
        let tokens = tokens();
        assert_eq!(tokens.authenticate("admin-secret"), Some(Role::Admin));
        assert_eq!(tokens.authenticate("read-secret"), Some(Role::Read));
        assert_eq!(tokens.authenticate("admin-secre"), None);
        assert_eq!(tokens.authenticate(""), None);
    }

    #[test]
    fn check_answers_401_without_or_with_a_wrong_token_and_403_for_a_weak_role() {
        let tokens = tokens();
        let missing = check(&tokens, None, None, Role::Read).unwrap_err();
        assert_eq!(missing.status, 401);
        let wrong = check(&tokens, Some("Bearer nope"), None, Role::Read).unwrap_err();
        assert_eq!(wrong.status, 401);
        let scheme = check(&tokens, Some("Basic read-secret"), None, Role::Read).unwrap_err();
        assert_eq!(scheme.status, 401);
        let weak = check(&tokens, Some("Bearer read-secret"), None, Role::User).unwrap_err();
        assert_eq!(weak.status, 403);
        assert_eq!(
            check(&tokens, Some("bearer user-secret"), None, Role::User).ok(),
            Some(Principal { role: Role::User })
        );
        // The query is only a fallback for a request without the header.
        assert_eq!(
            check(&tokens, None, Some("admin-secret"), Role::Admin).ok(),
            Some(Principal { role: Role::Admin })
        );
        assert_eq!(
            check(&tokens, None, Some("user-secret"), Role::Read).ok(),
            Some(Principal { role: Role::User })
        );
        assert_eq!(
            check(&tokens, None, Some("nope"), Role::Read)
                .unwrap_err()
                .status,
            401
        );
    }

    #[test]
    fn the_admin_token_is_generated_once_with_mode_0600_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let first = load_or_generate_admin_token(dir.path()).unwrap();
        assert!(first.generated);
        assert!(first.token.starts_with("gf_") && first.token.len() == 67);
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = load_or_generate_admin_token(dir.path()).unwrap();
        assert!(!second.generated);
        assert_eq!(second.token, first.token);
        assert!(!format!("{second:?}").contains(&first.token));

        std::fs::set_permissions(&first.path, std::fs::Permissions::from_mode(0o644)).unwrap();
        load_or_generate_admin_token(dir.path()).unwrap();
        let mode = std::fs::metadata(&first.path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        // Nothing else was left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }
}
