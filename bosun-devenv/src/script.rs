//! What a simulated container runs, read from its `command` and `args`: a shell
//! invocation (`sh -c "…"`, `bash -c`, `/bin/sh -ec`, …) is a tiny script the pod
//! simulator plays out; anything else is left to the image conventions of
//! [`PodSimulator`](super::PodSimulator).
//!
//! A script is statements separated by newlines, `;`, `&&` or `||` (both sides run:
//! nothing here fails but `exit`), with single and double quotes, backslash escapes
//! and `#` comments as in a shell:
//!
//! | statement        | simulated as                                                      |
//! |------------------|-------------------------------------------------------------------|
//! | `echo TEXT`      | one log line `TEXT` (quotes removed; `-n`/`-e` ignored; `>&2` still logs, `> FILE` does not) |
//! | `sleep N`        | `N` seconds (`0.5`, `10s`, `2m`, `1h`, `1d`) pass before the next statement; `sleep infinity` never ends |
//! | `exit N`         | the container ends with exit code `N` (`exit` alone: 0)           |
//! | `exec STATEMENT` | the statement                                                     |
//! | anything else    | done at once, silently (`cd`, `export`, `pg_dump … > file`)       |
//!
//! Pure: [`Program::of`] reads a container, [`Program::log`] gives its lines. No
//! variable expansion, pipes or conditionals: enough for a test to say what a
//! container logs, how long it runs and how it ends.

use std::time::Duration;

use k8s_openapi::api::core::v1::Container;

/// The shells whose `-c` script is played out.
const SHELLS: &[&str] = &["sh", "bash", "ash", "dash", "zsh", "ksh"];

/// What a container runs.
#[derive(Clone, Debug, PartialEq)]
pub enum Program {
    /// A shell script of `echo`, `sleep` and `exit` (see the module docs).
    Script(Script),
    /// Anything else: its command line as written; without a `command`, `the
    /// entrypoint of IMAGE ARGS`.
    Other { command_line: String },
}

/// A played-out script: what it logs when, and how it ends.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Script {
    /// Each log line with the time since the container started at which it is written.
    pub lines: Vec<(Duration, String)>,
    pub end: ScriptEnd,
}

/// How a script ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptEnd {
    /// `exit code` this long after the start.
    Exit { after: Duration, code: i32 },
    /// No statement left this long after the start (a shell then exits with 0).
    Done { after: Duration },
    /// `sleep infinity`: it never ends.
    Never,
}

impl Default for ScriptEnd {
    fn default() -> Self {
        ScriptEnd::Done {
            after: Duration::ZERO,
        }
    }
}

impl Program {
    /// The program of `container`: its `command` followed by its `args`, as the
    /// container runtime joins them (without `command`, the image's entrypoint runs
    /// with `args`, which is no shell this simulator knows).
    pub fn of(container: &Container) -> Program {
        let command = container.command.clone().unwrap_or_default();
        let args = container.args.clone().unwrap_or_default();
        if command.is_empty() {
            let image = container.image.as_deref().unwrap_or("its image");
            let command_line = format!("the entrypoint of {image} {}", args.join(" "));
            return Program::Other {
                command_line: command_line.trim_end().to_owned(),
            };
        }
        let words: Vec<String> = command.into_iter().chain(args).collect();
        match shell_script(&words) {
            Some(script) => Program::Script(parse_script(script)),
            None => Program::Other {
                command_line: words.join(" "),
            },
        }
    }

    /// Every line the program logs, with when since the start: a script's lines,
    /// or one line naming what ran.
    pub fn log(&self) -> Vec<(Duration, String)> {
        match self {
            Program::Script(script) => script.lines.clone(),
            Program::Other { command_line } => {
                vec![(Duration::ZERO, format!("simulated: ran {command_line}"))]
            }
        }
    }
}

/// The script of a shell invocation `SHELL [options] -c SCRIPT [arg0 …]`, where
/// `-c` may be combined with other one-letter options (`-ec`, `-euxc`).
fn shell_script(words: &[String]) -> Option<&str> {
    let shell = words.first()?.rsplit('/').next()?;
    if !SHELLS.contains(&shell) {
        return None;
    }
    let mut reads_script = false;
    let mut rest = words[1..].iter();
    while let Some(word) = rest.next() {
        match word.as_str() {
            // Options with an argument: `-o pipefail`, `+o posix`.
            "-o" | "+o" => {
                rest.next();
            }
            option if option.starts_with('-') && option.len() > 1 && option != "--" => {
                reads_script |= option.contains('c');
            }
            script => return reads_script.then_some(script),
        }
    }
    None
}

/// Plays out `script` (see the module docs).
pub fn parse_script(script: &str) -> Script {
    let mut elapsed = Duration::ZERO;
    let mut lines = Vec::new();
    for statement in statements(script) {
        let words: Vec<&Word> = statement
            .iter()
            .skip_while(|word| !word.quoted && word.text == "exec")
            .collect();
        let Some(first) = words.first() else { continue };
        let args = &words[1..];
        match first.text.as_str() {
            "echo" => {
                if let Some(line) = echo_line(args) {
                    lines.push((elapsed, line));
                }
            }
            "sleep" => match sleep_duration(args) {
                Some(duration) => elapsed += duration,
                None => {
                    return Script {
                        lines,
                        end: ScriptEnd::Never,
                    };
                }
            },
            "exit" => {
                let code = args
                    .first()
                    .and_then(|word| word.text.parse::<i64>().ok())
                    // A shell's exit status is the low byte.
                    .map_or(0, |code| (code & 0xff) as i32);
                return Script {
                    lines,
                    end: ScriptEnd::Exit { after: elapsed, code },
                };
            }
            _ => {}
        }
    }
    Script {
        lines,
        end: ScriptEnd::Done { after: elapsed },
    }
}

/// The line an `echo` with `args` writes to the log: `None` when redirected to a file.
fn echo_line(args: &[&Word]) -> Option<String> {
    let mut words = Vec::new();
    let mut args = args.iter().peekable();
    // Leading options, as GNU echo reads them.
    while let Some(word) = args.peek() {
        if !word.quoted && matches!(word.text.as_str(), "-n" | "-e" | "-E" | "-ne" | "-en") {
            args.next();
        } else {
            break;
        }
    }
    while let Some(word) = args.next() {
        if !word.quoted {
            let text = word.text.as_str();
            // `>&2`, `1>&2`, `2>&1`: still the container's output.
            if text.ends_with(">&2") || text.ends_with(">&1") {
                continue;
            }
            // `> file`, `>> file`, `>file`, `2> file`: written elsewhere.
            let redirect = text.trim_start_matches(['1', '2']);
            if redirect.starts_with('>') {
                if redirect.trim_start_matches('>').is_empty() {
                    args.next();
                }
                if text.starts_with('2') {
                    continue;
                }
                return None;
            }
        }
        words.push(word.text.as_str());
    }
    Some(words.join(" "))
}

/// How long `sleep args` sleeps: the sum of its arguments, as GNU sleep; `None`
/// for `infinity`. An argument that is no duration counts as nothing.
fn sleep_duration(args: &[&Word]) -> Option<Duration> {
    let mut total = Duration::ZERO;
    for word in args {
        let text = word.text.as_str();
        if text == "infinity" || text == "inf" {
            return None;
        }
        let (number, unit) = match text.char_indices().last() {
            Some((at, suffix @ ('s' | 'm' | 'h' | 'd'))) => (&text[..at], suffix),
            _ => (text, 's'),
        };
        let Ok(value) = number.parse::<f64>() else {
            continue;
        };
        let seconds = value
            * match unit {
                'm' => 60.0,
                'h' => 3600.0,
                'd' => 86_400.0,
                _ => 1.0,
            };
        if seconds.is_finite() && seconds >= 0.0 {
            total += Duration::from_secs_f64(seconds.min(1e9));
        }
    }
    Some(total)
}

/// A word of a statement, its quotes removed. `quoted` words are never operators or
/// redirections.
#[derive(Clone, Debug, PartialEq)]
struct Word {
    text: String,
    quoted: bool,
}

/// The statements of `script`, each a list of words.
fn statements(script: &str) -> Vec<Vec<Word>> {
    let mut statements = Vec::new();
    let mut words: Vec<Word> = Vec::new();
    let mut word: Option<Word> = None;
    let mut chars = script.chars().peekable();
    let end_word = |word: &mut Option<Word>, words: &mut Vec<Word>| {
        if let Some(word) = word.take() {
            words.push(word);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                let word = word.get_or_insert_with(|| Word {
                    text: String::new(),
                    quoted: true,
                });
                word.quoted = true;
                for c in chars.by_ref() {
                    if c == '\'' {
                        break;
                    }
                    word.text.push(c);
                }
            }
            '"' => {
                let word = word.get_or_insert_with(|| Word {
                    text: String::new(),
                    quoted: true,
                });
                word.quoted = true;
                while let Some(c) = chars.next() {
                    match c {
                        '"' => break,
                        '\\' if matches!(chars.peek(), Some('"' | '\\' | '$' | '`')) => {
                            word.text.push(chars.next().expect("peeked"));
                        }
                        c => word.text.push(c),
                    }
                }
            }
            '\\' => match chars.next() {
                // A line continuation.
                Some('\n') | None => {}
                Some(c) => word
                    .get_or_insert_with(|| Word {
                        text: String::new(),
                        quoted: true,
                    })
                    .text
                    .push(c),
            },
            '#' if word.is_none() => {
                // A comment runs to the end of the line; the newline ends the statement.
                while chars.peek().is_some_and(|&c| c != '\n') {
                    chars.next();
                }
            }
            '\n' | ';' | '&' | '|' => {
                end_word(&mut word, &mut words);
                // `&&` and `||` are one separator.
                if (c == '&' || c == '|') && chars.peek() == Some(&c) {
                    chars.next();
                }
                // `>&2` was a redirection, not a separator.
                if c == '&'
                    && let Some(last) = words.last_mut()
                    && !last.quoted
                    && last.text.ends_with('>')
                {
                    last.text.push('&');
                    while let Some(digit) = chars.next_if(char::is_ascii_digit) {
                        last.text.push(digit);
                    }
                    continue;
                }
                if !words.is_empty() {
                    statements.push(std::mem::take(&mut words));
                }
            }
            c if c.is_whitespace() => end_word(&mut word, &mut words),
            c => word
                .get_or_insert_with(|| Word {
                    text: String::new(),
                    quoted: false,
                })
                .text
                .push(c),
        }
    }
    end_word(&mut word, &mut words);
    if !words.is_empty() {
        statements.push(words);
    }
    statements
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: &[&str], args: &[&str]) -> Container {
        Container {
            name: "main".into(),
            image: Some("example/app:1".into()),
            command: (!command.is_empty()).then(|| command.iter().map(|s| s.to_string()).collect()),
            args: (!args.is_empty()).then(|| args.iter().map(|s| s.to_string()).collect()),
            ..Container::default()
        }
    }

    fn script(text: &str) -> Script {
        parse_script(text)
    }

    fn secs(seconds: u64) -> Duration {
        Duration::from_secs(seconds)
    }

    #[test]
    fn shell_invocations_are_scripts() {
        for (command, args) in [
            (&["sh", "-c", "echo hi"][..], &[][..]),
            (&["/bin/sh", "-c"][..], &["echo hi"][..]),
            (&["bash"][..], &["-c", "echo hi"][..]),
            (&["/usr/bin/bash", "-euxc", "echo hi"][..], &[][..]),
            (&["bash", "-o", "pipefail", "-c", "echo hi", "arg0"][..], &[][..]),
        ] {
            let program = Program::of(&container(command, args));
            assert_eq!(
                program,
                Program::Script(Script {
                    lines: vec![(Duration::ZERO, "hi".into())],
                    end: ScriptEnd::Done {
                        after: Duration::ZERO
                    },
                }),
                "{command:?} {args:?}"
            );
        }
    }

    #[test]
    fn other_commands_are_named() {
        let migrate = Program::of(&container(&["uv", "run", "alembic"], &["upgrade", "head"]));
        assert_eq!(
            migrate,
            Program::Other {
                command_line: "uv run alembic upgrade head".into()
            }
        );
        assert_eq!(
            migrate.log(),
            [(
                Duration::ZERO,
                "simulated: ran uv run alembic upgrade head".to_string()
            )]
        );
        // A shell without -c runs a script file; args alone go to the entrypoint.
        assert!(matches!(
            Program::of(&container(&["sh", "/migrate.sh"], &[])),
            Program::Other { .. }
        ));
        let entrypoint = Program::of(&container(&[], &["--port", "80"]));
        assert_eq!(
            entrypoint.log()[0].1,
            "simulated: ran the entrypoint of example/app:1 --port 80"
        );
        assert_eq!(
            Program::of(&container(&[], &[])).log()[0].1,
            "simulated: ran the entrypoint of example/app:1"
        );
    }

    #[test]
    fn echo_sleep_and_exit_make_a_timeline() {
        let played = script(
            "echo 'migrating users'; sleep 2 && echo \"done: 3 tables\"\nsleep 0.5; exit 3; echo never",
        );
        assert_eq!(
            played.lines,
            [
                (Duration::ZERO, "migrating users".to_string()),
                (secs(2), "done: 3 tables".to_string()),
            ]
        );
        assert_eq!(
            played.end,
            ScriptEnd::Exit {
                after: Duration::from_millis(2500),
                code: 3
            }
        );
    }

    #[test]
    fn a_script_without_exit_is_done_after_its_last_statement() {
        assert_eq!(
            script("echo a; sleep 1m; echo b").end,
            ScriptEnd::Done { after: secs(60) }
        );
        assert_eq!(
            script("").end,
            ScriptEnd::Done {
                after: Duration::ZERO
            }
        );
        assert_eq!(
            script("exit").end,
            ScriptEnd::Exit {
                after: Duration::ZERO,
                code: 0
            }
        );
        assert_eq!(
            script("exit 257").end,
            ScriptEnd::Exit {
                after: Duration::ZERO,
                code: 1
            }
        );
    }

    #[test]
    fn sleep_infinity_never_ends() {
        let worker = script("echo EnrichmentWorker started; exec sleep infinity; echo never");
        assert_eq!(
            worker.lines,
            [(Duration::ZERO, "EnrichmentWorker started".to_string())]
        );
        assert_eq!(worker.end, ScriptEnd::Never);
    }

    #[test]
    fn sleep_units_add_up() {
        assert_eq!(
            script("sleep 1h 2m 3s 1d").end,
            ScriptEnd::Done {
                after: secs(86_400 + 3600 + 120 + 3)
            }
        );
        assert_eq!(
            script("sleep soon").end,
            ScriptEnd::Done {
                after: Duration::ZERO
            }
        );
    }

    #[test]
    fn echo_options_quotes_and_redirections() {
        let played = script(
            "echo -n  plain   words ; echo \"a \\\"quoted\\\" b\" >&2; echo 'x;y' 1>&2\n\
             echo hidden > /tmp/file; echo 'also hidden' >> /tmp/log; echo err 2> /dev/null\n\
             echo it\\'s # a comment; echo not run\n\
             echo",
        );
        let lines: Vec<&str> = played.lines.iter().map(|(_, line)| line.as_str()).collect();
        assert_eq!(lines, ["plain words", "a \"quoted\" b", "x;y", "err", "it's", ""]);
    }

    #[test]
    fn unknown_statements_take_no_time_and_log_nothing() {
        let played = script(
            "set -e\ncd /app && uv run alembic upgrade head || echo failed; pg_dump db > /backup/db.sql",
        );
        assert_eq!(played.lines, [(Duration::ZERO, "failed".to_string())]);
        assert_eq!(
            played.end,
            ScriptEnd::Done {
                after: Duration::ZERO
            }
        );
    }
}
