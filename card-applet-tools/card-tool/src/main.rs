//! card-tool: personalization and diagnostics of disability-certificate cards over PC/SC.

fn main() -> std::process::ExitCode {
    card_tool::cli::main()
}
