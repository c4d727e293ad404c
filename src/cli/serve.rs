//! `asterflow serve`: the run root in a browser, read-only, until Ctrl-C.

use crate::engine::error::Error;
use crate::engine::exit_code;
use crate::engine::runner::Paths;

pub async fn serve(paths: &Paths, bind: &str, token: Option<String>) -> Result<i32, Error> {
    let bind: std::net::SocketAddr = bind.parse().map_err(|error| {
        Error::Usage(format!(
            "--bind {bind}: {error} (for example 127.0.0.1:8321)"
        ))
    })?;
    crate::serve::check_bind(&bind, token.as_deref()).map_err(Error::Usage)?;
    let site = crate::serve::Site {
        run_root: crate::serve::canonical_root(&paths.run_root).map_err(Error::Usage)?,
        token,
    };
    let server = crate::serve::serve(site, bind, |local| {
        println!(
            "serving {} at http://{local}/ (Ctrl-C stops)",
            paths.run_root.display()
        );
        use std::io::Write;
        let _ = std::io::stdout().flush();
    });
    tokio::select! {
        result = server => result.map_err(Error::Usage)?,
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(exit_code::OK)
}
