//! The `fleetgate` binary: serve (the default), mint a token, or check a
//! running server's health.

use clap::Parser;
use fleetgate::{
    auth::{Authenticator, Claims, Keys, Role},
    config::{Cli, Command, Config},
};
use tracing_subscriber::{EnvFilter, fmt};

fn init_logging(config: &Config) {
    let filter = EnvFilter::try_new(&config.log).unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr);
    if config.log_format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn mint(config: &Config, args: &fleetgate::config::TokenArgs) -> Result<String, String> {
    // Checked before loading, which in demo mode would generate a throwaway key.
    if config.jwt_secret.is_none() && config.jwt_secrets.is_none() && config.jwt_private_key_file.is_none() {
        return Err(fleetgate::auth::KeyError::NoSigningKey.to_string());
    }
    let role = Role::parse(&args.role).ok_or("--role must be vehicle, viewer or dispatcher")?;
    let claims = Claims::issue(
        args.sub.clone(),
        args.fleet.clone(),
        role,
        args.vehicle.clone(),
        args.vehicles.clone(),
        args.ttl,
    )
    .map_err(|e| e.message.into_owned())?;
    let keys = Keys::from_config(config).map_err(|e| e.to_string())?;
    let auth = Authenticator::new(keys, config);
    auth.mint(&claims, config).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fleetgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run());
    // Background work (reconnect attempts to an unreachable Redis) must not
    // hold the exit past the grace period.
    runtime.shutdown_timeout(std::time::Duration::from_millis(200));
    code
}

async fn run() -> std::process::ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Token(args)) => match mint(&cli.config, &args) {
            Ok(token) => {
                println!("{token}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("fleetgate token: {e}");
                std::process::ExitCode::from(2)
            }
        },
        Some(Command::Healthcheck) => {
            match fleetgate::healthcheck::check(fleetgate::healthcheck::target(cli.config.addr)).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("fleetgate healthcheck: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
        None | Some(Command::Serve) => {
            init_logging(&cli.config);
            match fleetgate::server::serve(cli.config).await {
                Ok(()) => std::process::ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!("{e}");
                    eprintln!("fleetgate: {e}");
                    std::process::ExitCode::FAILURE
                }
            }
        }
    }
}

/// mimalloc: the per-connection and per-frame allocations of a socket
/// server are small and short-lived, where glibc's malloc spent a sixth of
/// a handshake's CPU time.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;
