//! `heartbeat-linstor provision|urls`: see `linstor::rest::cli`.

fn main() {
    let code = match linstor::rest::cli::run(std::env::args_os()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("heartbeat-linstor: {e:#}");
            1
        }
    };
    std::process::exit(code);
}
