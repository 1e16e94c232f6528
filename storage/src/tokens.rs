//! Tokens shared by the nodes of a cluster, as SHA-256 digests (hex): the database is what the
//! nodes share, so a token one node generated is valid on all of them.

use crate::StorageError;
use crate::db::{Database, with_pool};

/// A cluster-wide token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedToken {
    pub name: String,
    /// SHA-256 of the token, lowercase hex.
    pub sha256: String,
    pub role: String,
    /// The node that created it (its data directory holds the plain text).
    pub created_by: String,
}

#[derive(Clone)]
pub struct TokenRepository {
    db: Database,
}

impl TokenRepository {
    pub fn new(db: Database) -> TokenRepository {
        TokenRepository { db }
    }

    /// Records `token` under its name unless one is there already, and returns the one that
    /// is there after: ours, or the one another node recorded first. Safe against concurrent
    /// callers: the name is the primary key.
    pub async fn insert_or_get(&self, token: &SharedToken) -> Result<SharedToken, StorageError> {
        let row: Result<(String, String, String, String), sqlx::Error> =
            with_pool!(&self.db, |pool| {
                async {
                    sqlx::query(
                        "INSERT INTO cluster_tokens (name, sha256, role, created_by) \
                         VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO NOTHING",
                    )
                    .bind(&token.name)
                    .bind(&token.sha256)
                    .bind(&token.role)
                    .bind(&token.created_by)
                    .execute(pool)
                    .await?;
                    sqlx::query_as(
                        "SELECT name, sha256, role, created_by FROM cluster_tokens WHERE name = $1",
                    )
                    .bind(&token.name)
                    .fetch_one(pool)
                    .await
                }
                .await
            });
        let (name, sha256, role, created_by) = row.map_err(|e| self.db.error(e))?;
        Ok(SharedToken {
            name,
            sha256,
            role,
            created_by,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{TestBackend, run_on};

    async fn first_one_wins(backend: TestBackend) {
        run_on(backend, |database, _| async move {
            let tokens = TokenRepository::new(database);
            let ours = SharedToken {
                name: "generated-admin".into(),
                sha256: "a".repeat(64),
                role: "admin".into(),
                created_by: "node-a".into(),
            };
            assert_eq!(tokens.insert_or_get(&ours).await.unwrap(), ours);
            let theirs = SharedToken {
                sha256: "b".repeat(64),
                created_by: "node-b".into(),
                ..ours.clone()
            };
            assert_eq!(tokens.insert_or_get(&theirs).await.unwrap(), ours);
        })
        .await;
    }

    #[tokio::test]
    async fn the_first_node_to_record_a_token_wins_on_sqlite() {
        first_one_wins(TestBackend::Sqlite).await;
    }

    #[tokio::test]
    async fn the_first_node_to_record_a_token_wins_on_postgres() {
        first_one_wins(TestBackend::Postgres).await;
    }
}
