//! The `remora` binary: everything lives in the library; see `remora::run`.

fn main() -> std::process::ExitCode {
    remora::run(std::env::args_os().collect())
}
