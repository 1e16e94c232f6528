// `sqlx::migrate!` embeds the migration files at compile time; on stable Rust the macro cannot
// tell Cargo to watch them, so a new or edited migration would otherwise not be picked up.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
