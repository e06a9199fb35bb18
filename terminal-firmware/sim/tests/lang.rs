//! The operator's language through the real binary: `--lang`, `TERMINAL_SIM_LANG` and the
//! locale choose the language of errors; nothing here needs a reader, pcscd or a server.
#![allow(clippy::unwrap_used)]

use std::process::{Command, Output};

use e2e_tests::binary;

/// `terminal-sim` with a clean environment: C locale, no TERMINAL_SIM_* variables.
fn sim() -> Command {
    let mut cmd = Command::new(binary("terminal-sim", "terminal-sim").unwrap());
    for var in [
        "TERMINAL_SIM_DATA",
        "TERMINAL_SIM_SERVER",
        "TERMINAL_SIM_ADMIN_TOKEN",
        "TERMINAL_SIM_READER",
        "TERMINAL_SIM_LANG",
        "LC_ALL",
        "LC_MESSAGES",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("LANG", "C");
    cmd
}

/// Runs `cmd`, which must fail with status 1; its stderr.
fn fails(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: {stderr}");
    assert!(out.stdout.is_empty(), "{cmd:?}");
    stderr
}

#[test]
fn status_on_an_empty_directory_speaks_the_chosen_language() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gate");
    let status = |cmd: &mut Command| fails(cmd.arg("--data").arg(&data).arg("status"));
    // C locale: English, exactly as before.
    let en = status(&mut sim());
    assert!(en.starts_with("error: reading "), "{en}");
    assert!(en.contains("(run `terminal-sim init --data "), "{en}");
    // --lang, before or after the command.
    for args in [&["--lang", "zh-CN"][..], &["--lang", "zh"]] {
        let zh = status(sim().args(args));
        assert!(zh.starts_with("错误：读取 "), "{zh}");
        assert!(
            zh.contains("失败（请先运行 `terminal-sim init --data "),
            "{zh}"
        );
        assert!(zh.contains("terminal.json"), "{zh}");
    }
    let zh = fails(
        sim()
            .arg("--data")
            .arg(&data)
            .args(["status", "--lang", "zh-CN"]),
    );
    assert!(zh.starts_with("错误："), "{zh}");
    // The locale.
    let zh = status(sim().env("LANG", "zh_CN.UTF-8"));
    assert!(zh.starts_with("错误：读取 "), "{zh}");
    let zh = status(sim().env("LC_MESSAGES", "zh_CN.UTF-8"));
    assert!(zh.starts_with("错误："), "{zh}");
    // LC_ALL over LANG; the variable over the locale; --lang over the variable.
    assert_eq!(
        status(sim().env("LANG", "zh_CN.UTF-8").env("LC_ALL", "C")),
        en
    );
    let by_var = status(
        sim()
            .env("LANG", "zh_CN.UTF-8")
            .env("TERMINAL_SIM_LANG", "en"),
    );
    assert_eq!(by_var, en);
    let zh = status(sim().env("TERMINAL_SIM_LANG", "zh-CN"));
    assert!(zh.starts_with("错误："), "{zh}");
    assert_eq!(
        status(
            sim()
                .env("TERMINAL_SIM_LANG", "zh-CN")
                .args(["--lang", "en"])
        ),
        en
    );
    assert!(status(sim().args(["--lang", "auto"])).starts_with("error: "));
}

#[test]
fn plain_http_to_another_machine_is_refused_in_both_languages() {
    let dir = tempfile::tempdir().unwrap();
    let init = |cmd: &mut Command| {
        fails(
            cmd.arg("--data")
                .arg(dir.path().join("gate"))
                .args(["init", "--service", "transit"])
                .args(["--server", "http://10.0.0.1:8080"]),
        )
    };
    let en = init(&mut sim());
    assert!(
        en.starts_with(
            "error: server URL \"http://10.0.0.1:8080\" is plain HTTP to another machine"
        ),
        "{en}"
    );
    let zh = init(sim().args(["--lang", "zh-CN"]));
    assert!(
        zh.starts_with("错误：服务器地址 \"http://10.0.0.1:8080\" 是"),
        "{zh}"
    );
    for id in ["https://", "--ca-cert", "127.0.0.1", "localhost"] {
        assert!(zh.contains(id), "{id} missing: {zh}");
    }
    assert_eq!(init(sim().env("LANG", "zh_CN.UTF-8")), zh);
    // Nothing was created: the URL is checked first.
    assert!(!dir.path().join("gate").exists());
}

#[test]
fn command_line_mistakes_are_explained_in_both_languages() {
    let dir = tempfile::tempdir().unwrap();
    let init = |cmd: &mut Command, extra: &[&str]| {
        fails(
            cmd.arg("--data")
                .arg(dir.path().join("gate"))
                .args([
                    "init",
                    "--service",
                    "welfare",
                    "--server",
                    "http://127.0.0.1:9",
                ])
                .args(extra),
        )
    };
    let en = init(&mut sim(), &["--certificate", "zz"]);
    assert_eq!(en.trim(), "error: --certificate is neither hex nor @FILE");
    let zh = init(sim().args(["--lang", "zh-CN"]), &["--certificate", "zz"]);
    assert_eq!(
        zh.trim(),
        "错误：--certificate 既不是十六进制，也不是 @FILE"
    );
    let en = init(&mut sim(), &["--root-key", "02ab"]);
    assert!(
        en.starts_with("error: --root-key must be 33 bytes of hex"),
        "{en}"
    );
    let zh = init(sim().env("LANG", "zh_CN.UTF-8"), &["--root-key", "02ab"]);
    assert!(
        zh.starts_with("错误：--root-key 必须是 33 字节的十六进制"),
        "{zh}"
    );
    // An I/O detail underneath stays as the system says it.
    let missing = dir.path().join("missing.pem");
    let zh = init(
        sim().args(["--lang", "zh-CN"]),
        &["--ca-cert", missing.to_str().unwrap()],
    );
    assert!(zh.starts_with("错误：无法读取 CA 证书 "), "{zh}");
    assert!(
        zh.contains("missing.pem：No such file or directory"),
        "{zh}"
    );
}

#[test]
fn a_bad_language_is_refused_by_the_parser() {
    let out = sim().args(["--lang", "fr", "status"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
}
