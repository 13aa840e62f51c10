//! Reading from the person at the terminal, or from standard input for scripts. Secrets
//! are never echoed and are wiped from memory when dropped.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use anyhow::{Context as _, bail};
use zeroize::Zeroizing;

/// Whether standard input is a terminal (a person can be asked).
pub fn interactive() -> bool {
    std::io::stdin().is_terminal()
}

/// One line of standard input, without its line ending or surrounding whitespace.
/// `what` names it in errors.
pub fn secret_line_from_stdin(what: &str) -> anyhow::Result<Zeroizing<String>> {
    let mut line = Zeroizing::new(String::new());
    let n = std::io::stdin()
        .lock()
        .read_line(&mut line)
        .with_context(|| format!("cannot read the {what} from standard input"))?;
    if n == 0 {
        bail!("standard input ended before a {what} was read");
    }
    let trimmed = Zeroizing::new(line.trim().to_owned());
    if trimmed.is_empty() {
        bail!("the {what} read from standard input is empty");
    }
    Ok(trimmed)
}

/// A secret typed at the terminal without echo.
pub fn secret_from_terminal(prompt: &str, what: &str) -> anyhow::Result<Zeroizing<String>> {
    let typed = Zeroizing::new(
        rpassword::prompt_password(prompt)
            .with_context(|| format!("cannot read the {what} from the terminal"))?,
    );
    let trimmed = Zeroizing::new(typed.trim().to_owned());
    if trimmed.is_empty() {
        bail!("no {what} was typed");
    }
    Ok(trimmed)
}

/// A secret from standard input (`from_stdin`) or else a no-echo prompt, which needs a
/// terminal; `flag` is the option that reads standard input, named when there is none.
pub fn secret(
    from_stdin: bool,
    prompt: &str,
    what: &str,
    flag: &str,
) -> anyhow::Result<Zeroizing<String>> {
    if from_stdin {
        return secret_line_from_stdin(what);
    }
    if !interactive() {
        bail!(
            "standard input is not a terminal, so the {what} cannot be asked for: pipe it with {flag}"
        );
    }
    secret_from_terminal(prompt, what)
}

/// Asks on the terminal (stderr) for a number from 1 to `n`, or one of `names`; returns
/// the 0-based index.
pub fn choose(prompt: &str, names: &[String]) -> anyhow::Result<usize> {
    let n = names.len();
    for _ in 0..3 {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        if std::io::stdin().lock().read_line(&mut line)? == 0 {
            bail!("no choice was made");
        }
        if let Some(i) = parse_choice(line.trim(), names) {
            return Ok(i);
        }
        eprintln!("Type a number from 1 to {n}, or a name from the list.");
    }
    bail!("no valid choice was made")
}

/// `input` as an index into `names`: a 1-based number or an exact name.
pub fn parse_choice(input: &str, names: &[String]) -> Option<usize> {
    if let Ok(k) = input.parse::<usize>() {
        return (1..=names.len()).contains(&k).then(|| k - 1);
    }
    names.iter().position(|name| name == input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choices_by_number_or_name() {
        let names = vec!["openai".to_owned(), "mock".to_owned()];
        assert_eq!(parse_choice("1", &names), Some(0));
        assert_eq!(parse_choice("2", &names), Some(1));
        assert_eq!(parse_choice("mock", &names), Some(1));
        assert_eq!(parse_choice("0", &names), None);
        assert_eq!(parse_choice("3", &names), None);
        assert_eq!(parse_choice("Mock", &names), None);
        assert_eq!(parse_choice("", &names), None);
    }
}
