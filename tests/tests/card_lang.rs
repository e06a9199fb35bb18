//! card-tool speaks Simplified Chinese or English: `--lang`, `CARD_TOOL_LANG`, or the locale.
//! The real binary, with the real pcscd for the reader messages; `--json` keeps its keys and
//! machine-readable values whatever the language.

use std::net::TcpListener;
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e_tests::{json_of, pcsc_session, run_fails, run_ok, run_output, VirtualCard};

/// card-tool in a plain (English) locale, unless `env` says otherwise: nothing of the
/// machine's own locale or `CARD_TOOL_LANG` leaks in.
fn card_tool(env: &[(&str, &str)]) -> Result<Command> {
    let mut cmd = e2e_tests::card_tool()?;
    for var in ["CARD_TOOL_LANG", "LC_ALL", "LC_MESSAGES"] {
        cmd.env_remove(var);
    }
    cmd.env("LANG", "C.UTF-8");
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(cmd)
}

#[test]
fn a_missing_card_is_reported_in_chinese_when_asked_and_in_english_by_default() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let status = ["--reader", "Virtual PCD 00 01", "status"];

    let en = run_fails(card_tool(&[])?.args(status))?;
    ensure!(
        en.contains("error: no card in reader \"Virtual PCD 00 01\": put a card on it"),
        "{en}"
    );
    let zh_text = "错误：读卡器 \"Virtual PCD 00 01\" 上没有卡片：请把卡片放上去";
    let zh = run_fails(card_tool(&[])?.args(["--lang", "zh"]).args(status))?;
    ensure!(zh.contains(zh_text), "{zh}");
    // The same from the environment: the option's variable, or a Chinese locale (auto).
    let zh = run_fails(card_tool(&[("CARD_TOOL_LANG", "zh")])?.args(status))?;
    ensure!(zh.contains(zh_text), "{zh}");
    let zh = run_fails(card_tool(&[("LANG", "zh_CN.UTF-8")])?.args(status))?;
    ensure!(zh.contains(zh_text), "{zh}");
    // An explicit choice wins over the locale.
    let en = run_fails(
        card_tool(&[("LC_ALL", "zh_CN.UTF-8")])?
            .args(["--lang", "en"])
            .args(status),
    )?;
    ensure!(en.contains("no card in reader"), "{en}");

    // A reader that does not exist: the command to list them is kept in the Chinese text.
    let zh =
        run_fails(card_tool(&[])?.args(["--lang", "zh", "--reader", "No Such Reader", "read"]))?;
    ensure!(
        zh.contains("没有名为 \"No Such Reader\" 的读卡器") && zh.contains("`card-tool readers`"),
        "{zh}"
    );

    // --json: the error object's message follows the language, its keys do not change.
    let out = run_output(
        card_tool(&[])?
            .args(["--lang", "zh", "--json"])
            .args(status),
        Duration::from_secs(60),
    )?;
    ensure!(!out.status.success());
    let v = json_of(&String::from_utf8_lossy(&out.stdout))?;
    ensure!(v["ok"] == false, "{v}");
    let message = v["error"].as_str().context("error")?;
    ensure!(
        message.starts_with("读卡器 \"Virtual PCD 00 01\" 上没有卡片"),
        "{v}"
    );
    Ok(())
}

#[test]
fn a_card_is_described_in_either_language_with_the_same_json() -> Result<()> {
    let _pcsc = pcsc_session()?;
    let dir = tempfile::tempdir()?;
    let state = dir.path().join("blank");
    VirtualCard::init_blank(&state, &[0x42; 16], Some([7; 10]))?;
    let card = VirtualCard::insert(&state, 0, &[])?;
    let reader = card.reader();

    let zh = run_ok(card_tool(&[])?.args(["--lang", "zh", "--reader", &reader, "status"]))?;
    ensure!(
        zh.contains(&format!("读卡器：   {reader}\n"))
            && zh.contains("生命周期： BLANK（空白卡）\n"),
        "{zh}"
    );
    let en = run_ok(card_tool(&[])?.args(["--reader", &reader, "status"]))?;
    ensure!(
        en.contains(&format!("reader:      {reader}\n")) && en.contains("life cycle:  BLANK\n"),
        "{en}"
    );
    let listing = run_ok(card_tool(&[])?.args(["--lang", "zh", "readers"]))?;
    ensure!(
        listing.contains(&format!("{reader}：有卡片，ATR ")),
        "{listing}"
    );

    // The JSON of a status has no human message: the same in both languages.
    let json = |lang: &str| -> Result<serde_json::Value> {
        json_of(&run_ok(card_tool(&[])?.args([
            "--lang", lang, "--reader", &reader, "--json", "status",
        ]))?)
    };
    let (zh, en) = (json("zh")?, json("en")?);
    ensure!(zh == en && zh["life_cycle"] == "BLANK", "{zh} / {en}");
    // `read` carries one human message (what the holder data is); only it changes.
    let read = |lang: &str| -> Result<serde_json::Value> {
        json_of(&run_ok(
            card_tool(&[])?.args(["--lang", lang, "--reader", &reader, "--json", "read"]),
        )?)
    };
    let (zh, en) = (read("zh")?, read("en")?);
    ensure!(
        en["holder_data"]
            == "none: the card discloses attributes only to an authenticated terminal",
        "{en}"
    );
    ensure!(
        zh["holder_data"]
            .as_str()
            .is_some_and(|s| s.starts_with("无：")),
        "{zh}"
    );
    let keys = |v: &serde_json::Value| -> Vec<String> {
        v.as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    };
    ensure!(
        keys(&zh) == keys(&en) && zh["life_cycle"] == en["life_cycle"],
        "{zh} / {en}"
    );
    Ok(())
}

/// No pcscd needed: the server is asked before any reader.
#[test]
fn an_unreachable_server_is_reported_in_chinese_when_asked_and_in_english_by_default() -> Result<()>
{
    // A port nobody listens on any more.
    let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("http://127.0.0.1:{port}");
    let credit = |cmd: &mut Command| {
        cmd.args(["credit", "--server", &url, "--token", "t"])
            .args(["--serial", "0102030405060708", "--amount", "5"]);
    };

    let mut cmd = card_tool(&[])?;
    credit(&mut cmd);
    let en = run_fails(&mut cmd)?;
    ensure!(
        en.contains(&format!(
            "error: cannot reach the issuance server at {url}/api/v1/"
        )),
        "{en}"
    );
    ensure!(
        en.contains("(`issuance-server serve`) and is --server right?"),
        "{en}"
    );

    let mut cmd = card_tool(&[])?;
    cmd.args(["--lang", "zh"]);
    credit(&mut cmd);
    let zh = run_fails(&mut cmd)?;
    ensure!(
        zh.contains(&format!("错误：无法连接位于 {url}/api/v1/")),
        "{zh}"
    );
    ensure!(
        zh.contains(
            "请确认服务器正在运行（`issuance-server serve`），并检查 --server 是否填写正确"
        ),
        "{zh}"
    );
    Ok(())
}
