//! The domain: a [`Bet`], the rules a bet must follow, and the draw.
//!
//! Nothing here knows about sockets, frames or files: the protocol carries bets, the
//! storage keeps them, and both ask this module whether a bet is valid.

use std::collections::BTreeMap;
use std::fmt;

use chrono::NaiveDate;

/// The highest number a bet may play (numbers are `0..=MAX_NUMBER`).
pub const MAX_NUMBER: u16 = 9999;
/// The longest document (DNI) accepted, in digits.
pub const MAX_DOCUMENT_DIGITS: usize = 8;

/// The earliest birthdate accepted (1900-01-01): anything before is a typo, not a
/// bettor.
pub const EARLIEST_BIRTHDATE: NaiveDate = match NaiveDate::from_ymd_opt(1900, 1, 1) {
    Some(date) => date,
    None => NaiveDate::MIN, // Unreachable: 1900-01-01 is a valid date.
};

/// Identifies an agency ("agencia de quiniela"); agencies are numbered `1..=N`.
pub type AgencyId = u32;

/// One bet as an agency submits it.
///
/// A `Bet` may hold anything; [`Bet::validate`] says whether it follows the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bet {
    /// The bettor's first name(s).
    pub first_name: String,
    /// The bettor's last name(s).
    pub last_name: String,
    /// The bettor's document (DNI): 1 to 8 digits, leading zeros significant.
    pub document: String,
    /// The bettor's date of birth.
    pub birthdate: NaiveDate,
    /// The number played, `0..=9999`.
    pub number: u16,
}

/// Why a bet breaks the rules.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BetError {
    /// A name is empty (or only white space).
    EmptyName {
        /// `"first_name"` or `"last_name"`.
        field: &'static str,
    },
    /// A name holds a control character (line breaks would corrupt the stored CSV).
    ControlCharacter {
        /// `"first_name"` or `"last_name"`.
        field: &'static str,
    },
    /// The document is not 1 to 8 ASCII digits.
    BadDocument(String),
    /// The birthdate is today or in the future.
    FutureBirthdate(NaiveDate),
    /// The birthdate is before [`EARLIEST_BIRTHDATE`]: not a real person's.
    AncientBirthdate(NaiveDate),
    /// The number is above 9999.
    NumberOutOfRange(u16),
    /// A birthdate is not written `YYYY-MM-DD` (see [`parse_birthdate`]).
    MalformedBirthdate(String),
    /// A birthdate is written right but no such day exists (`1999-02-30`).
    ImpossibleBirthdate {
        /// The date as written.
        text: String,
        /// What is wrong with it, e.g. `1999-02 has 28 days`.
        why: String,
    },
}

impl fmt::Display for BetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BetError::EmptyName { field } => write!(f, "{field} is empty"),
            BetError::ControlCharacter { field } => {
                write!(f, "{field} contains a control character")
            }
            BetError::BadDocument(doc) => write!(
                f,
                "document {doc:?} is not 1 to {MAX_DOCUMENT_DIGITS} digits"
            ),
            BetError::FutureBirthdate(date) => {
                write!(f, "birthdate {date} is not in the past")
            }
            BetError::AncientBirthdate(date) => {
                write!(f, "birthdate {date} is before {EARLIEST_BIRTHDATE}")
            }
            BetError::NumberOutOfRange(n) => {
                write!(f, "number {n} is not in 0..={MAX_NUMBER}")
            }
            BetError::MalformedBirthdate(text) => {
                write!(f, "birthdate {text:?} is not written YYYY-MM-DD")
            }
            BetError::ImpossibleBirthdate { text, why } => {
                write!(f, "birthdate {text:?} is not a real date ({why})")
            }
        }
    }
}

impl std::error::Error for BetError {}

impl Bet {
    /// Checks every rule of a bet; `today` is the first date that is *not* in the past.
    pub fn validate(&self, today: NaiveDate) -> Result<(), BetError> {
        check_name("first_name", &self.first_name)?;
        check_name("last_name", &self.last_name)?;
        if !is_document(&self.document) {
            return Err(BetError::BadDocument(self.document.clone()));
        }
        if self.birthdate >= today {
            return Err(BetError::FutureBirthdate(self.birthdate));
        }
        if self.birthdate < EARLIEST_BIRTHDATE {
            return Err(BetError::AncientBirthdate(self.birthdate));
        }
        if self.number > MAX_NUMBER {
            return Err(BetError::NumberOutOfRange(self.number));
        }
        Ok(())
    }

    /// Whether this bet wins a draw whose winning number is `winning_number`.
    pub fn wins(&self, winning_number: u16) -> bool {
        self.number == winning_number
    }
}

/// Parses a birthdate written `YYYY-MM-DD` (four digits, then one or two for the month
/// and for the day): [`BetError::MalformedBirthdate`] if it is written otherwise,
/// [`BetError::ImpossibleBirthdate`] for a day that does not exist, such as
/// `1999-02-30` or `1999-13-01`. Whether the date is plausible for a bettor is
/// [`Bet::validate`]'s business.
pub fn parse_birthdate(text: &str) -> Result<NaiveDate, BetError> {
    let malformed = || BetError::MalformedBirthdate(text.to_string());
    let mut parts = text.as_bytes().split(|&b| b == b'-');
    let (Some(y), Some(m), Some(d), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    // The value of `part` if it is `lengths` ASCII digits (at most four: no overflow).
    let number = |part: &[u8], lengths: std::ops::RangeInclusive<usize>| {
        if lengths.contains(&part.len()) && part.iter().all(u8::is_ascii_digit) {
            Some(
                part.iter()
                    .fold(0u32, |n, &digit| n * 10 + u32::from(digit - b'0')),
            )
        } else {
            None
        }
    };
    let (Some(year), Some(month), Some(day)) =
        (number(y, 4..=4), number(m, 1..=2), number(d, 1..=2))
    else {
        return Err(malformed());
    };
    // Four digits: at most 9999, which fits an i32.
    let year = year as i32;
    let impossible = |why: String| BetError::ImpossibleBirthdate {
        text: text.to_string(),
        why,
    };
    if !(1..=12).contains(&month) {
        return Err(impossible(format!("there is no month {month}")));
    }
    NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| {
        let days = (28..=31)
            .rev()
            .find(|&last| NaiveDate::from_ymd_opt(year, month, last).is_some())
            .unwrap_or(28);
        impossible(format!("{year:04}-{month:02} has {days} days"))
    })
}

/// Today's date in local time: the bound for "a real past date".
pub fn today() -> NaiveDate {
    chrono::Local::now().date_naive()
}

fn check_name(field: &'static str, name: &str) -> Result<(), BetError> {
    let bytes = name.as_bytes();
    // An ASCII byte that is not white space (usually the first) proves the name is
    // not blank; only a name without one needs the Unicode test.
    let ascii_text = |b: &u8| b.is_ascii() && !matches!(b, b'\t'..=b'\r' | b' ');
    if !bytes.iter().any(ascii_text) && name.trim().is_empty() {
        return Err(BetError::EmptyName { field });
    }
    // Control characters are U+0000..=U+001F, U+007F (single bytes) and
    // U+0080..=U+009F (0xC2 then a byte below 0xA0): one pass without early exit
    // finds the bytes that may start one, and only then are the characters read.
    let suspect = bytes.iter().fold(false, |any, &b| {
        any | (b < 0x20) | (b == 0x7f) | (b == 0xC2)
    });
    if suspect && name.chars().any(char::is_control) {
        return Err(BetError::ControlCharacter { field });
    }
    Ok(())
}

/// Whether `doc` is a document (DNI) as a bet's must be: 1 to [`MAX_DOCUMENT_DIGITS`]
/// ASCII digits, leading zeros kept.
pub fn is_document(doc: &str) -> bool {
    (1..=MAX_DOCUMENT_DIGITS).contains(&doc.len()) && doc.bytes().all(|b| b.is_ascii_digit())
}

/// The result of a draw: for each agency, the documents of its winning bets, in the
/// order they were stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrawResult {
    winning_number: u16,
    winners: BTreeMap<AgencyId, Vec<String>>,
}

impl DrawResult {
    /// An empty draw for `winning_number`; feed it bets with [`DrawResult::consider`].
    pub fn new(winning_number: u16) -> DrawResult {
        DrawResult {
            winning_number,
            winners: BTreeMap::new(),
        }
    }

    /// Runs the draw over `bets` (agency and bet pairs, in storage order).
    pub fn run<I>(bets: I, winning_number: u16) -> DrawResult
    where
        I: IntoIterator<Item = (AgencyId, Bet)>,
    {
        let mut draw = DrawResult::new(winning_number);
        for (agency, bet) in bets {
            draw.consider(agency, bet);
        }
        draw
    }

    /// Adds one stored bet of `agency` to the draw.
    pub fn consider(&mut self, agency: AgencyId, bet: Bet) {
        if bet.wins(self.winning_number) {
            self.winners.entry(agency).or_default().push(bet.document);
        }
    }

    /// The documents of `agency`'s winners (empty when it has none).
    pub fn winners_of(&self, agency: AgencyId) -> &[String] {
        self.winners.get(&agency).map_or(&[], Vec::as_slice)
    }

    /// The number this draw looks for.
    pub fn winning_number(&self) -> u16 {
        self.winning_number
    }

    /// How many winning bets the draw found, over all agencies.
    pub fn total(&self) -> usize {
        self.winners.values().map(Vec::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).expect("valid test date")
    }

    fn bet(number: u16) -> Bet {
        Bet {
            first_name: "Santiago Lionel".into(),
            last_name: "Lorca".into(),
            document: "30904465".into(),
            birthdate: date(1999, 3, 17),
            number,
        }
    }

    #[test]
    fn a_good_bet_is_valid() {
        assert_eq!(bet(7574).validate(date(2026, 1, 1)), Ok(()));
        assert_eq!(bet(0).validate(date(2026, 1, 1)), Ok(()));
        assert_eq!(bet(9999).validate(date(2026, 1, 1)), Ok(()));
    }

    #[test]
    fn every_rule_is_enforced() {
        let today = date(2026, 1, 1);
        let mut b = bet(1);
        b.first_name = "  ".into();
        assert_eq!(
            b.validate(today),
            Err(BetError::EmptyName {
                field: "first_name"
            })
        );
        let mut b = bet(1);
        b.last_name = String::new();
        assert_eq!(
            b.validate(today),
            Err(BetError::EmptyName { field: "last_name" })
        );
        let mut b = bet(1);
        b.last_name = "Lor\nca".into();
        assert_eq!(
            b.validate(today),
            Err(BetError::ControlCharacter { field: "last_name" })
        );
        for doc in ["", "123456789", "12a4", "-1", " 123", "１２３"] {
            let mut b = bet(1);
            b.document = doc.into();
            assert_eq!(b.validate(today), Err(BetError::BadDocument(doc.into())));
        }
        let mut b = bet(1);
        b.birthdate = today;
        assert_eq!(b.validate(today), Err(BetError::FutureBirthdate(today)));
        b.birthdate = date(1899, 12, 31);
        assert_eq!(
            b.validate(today),
            Err(BetError::AncientBirthdate(date(1899, 12, 31)))
        );
        b.birthdate = date(1900, 1, 1);
        assert_eq!(b.validate(today), Ok(()));
        assert_eq!(
            bet(10000).validate(today),
            Err(BetError::NumberOutOfRange(10000))
        );
    }

    #[test]
    fn zero_document_and_accents_are_valid() {
        let mut b = bet(5);
        b.document = "00000000".into();
        b.first_name = "Tiago Nicolás".into();
        b.last_name = "Núñez, de la Peña".into();
        assert_eq!(b.validate(date(2026, 1, 1)), Ok(()));
    }

    #[test]
    fn errors_read_well() {
        assert_eq!(
            BetError::NumberOutOfRange(12000).to_string(),
            "number 12000 is not in 0..=9999"
        );
        assert_eq!(
            BetError::BadDocument("12a".into()).to_string(),
            "document \"12a\" is not 1 to 8 digits"
        );
    }

    #[test]
    fn birthdates_parse_and_impossible_ones_say_so() {
        assert_eq!(parse_birthdate("1999-03-17"), Ok(date(1999, 3, 17)));
        assert_eq!(parse_birthdate("1999-3-7"), Ok(date(1999, 3, 7)));
        assert_eq!(parse_birthdate("2000-02-29"), Ok(date(2000, 2, 29)));
        let impossible = |text: &str| match parse_birthdate(text) {
            Err(e @ BetError::ImpossibleBirthdate { .. }) => e.to_string(),
            other => panic!("{text}: {other:?}"),
        };
        assert_eq!(
            impossible("1999-02-30"),
            "birthdate \"1999-02-30\" is not a real date (1999-02 has 28 days)"
        );
        assert!(impossible("1900-02-29").contains("1900-02 has 28 days"));
        assert!(impossible("2024-04-31").contains("2024-04 has 30 days"));
        assert!(impossible("1999-01-00").contains("1999-01 has 31 days"));
        assert!(impossible("1999-13-01").contains("there is no month 13"));
        assert!(impossible("1999-00-01").contains("there is no month 0"));
        for malformed in [
            "17/03/1999",
            "1999-03",
            "1999-03-17-1",
            "99-03-17",
            "1999-003-17",
            "1999-03-17 ",
            "1999-+3-17",
            "",
            "１９９９-03-17",
        ] {
            assert_eq!(
                parse_birthdate(malformed),
                Err(BetError::MalformedBirthdate(malformed.into())),
                "{malformed:?}"
            );
        }
        assert_eq!(
            BetError::MalformedBirthdate("17/03/1999".into()).to_string(),
            "birthdate \"17/03/1999\" is not written YYYY-MM-DD"
        );
    }

    /// The name rules as first written, character by character.
    fn check_name_reference(field: &'static str, name: &str) -> Result<(), BetError> {
        if name.trim().is_empty() {
            return Err(BetError::EmptyName { field });
        }
        if name.chars().any(char::is_control) {
            return Err(BetError::ControlCharacter { field });
        }
        Ok(())
    }

    #[test]
    fn names_at_the_edges_of_white_space_and_control_characters() {
        for (name, want) in [
            ("Ana", Ok(())),
            ("Ça ¡ñ", Ok(())),
            ("\u{a0}x", Ok(())),
            ("\u{a0}", Err(BetError::EmptyName { field: "f" })),
            ("\u{2003}\t", Err(BetError::EmptyName { field: "f" })),
            ("\u{85}", Err(BetError::EmptyName { field: "f" })),
            ("\x0b", Err(BetError::EmptyName { field: "f" })),
            ("a\u{85}", Err(BetError::ControlCharacter { field: "f" })),
            ("a\u{80}", Err(BetError::ControlCharacter { field: "f" })),
            ("\u{9f}a", Err(BetError::ControlCharacter { field: "f" })),
            ("a\x1fb", Err(BetError::ControlCharacter { field: "f" })),
            ("a\x7f", Err(BetError::ControlCharacter { field: "f" })),
            ("a\x0b", Err(BetError::ControlCharacter { field: "f" })),
            ("\u{1c}", Err(BetError::ControlCharacter { field: "f" })),
        ] {
            assert_eq!(check_name("f", name), want, "{name:?}");
            assert_eq!(check_name_reference("f", name), want, "{name:?}");
        }
    }

    /// `parse_birthdate` as first written (`str::split` and `str::parse`).
    fn parse_birthdate_reference(text: &str) -> Result<NaiveDate, BetError> {
        let malformed = || BetError::MalformedBirthdate(text.to_string());
        let mut parts = text.split('-');
        let (Some(y), Some(m), Some(d), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed());
        };
        let digits = |part: &str, lengths: std::ops::RangeInclusive<usize>| {
            lengths.contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit())
        };
        if !(digits(y, 4..=4) && digits(m, 1..=2) && digits(d, 1..=2)) {
            return Err(malformed());
        }
        let (Ok(year), Ok(month), Ok(day)) = (y.parse::<i32>(), m.parse::<u32>(), d.parse::<u32>())
        else {
            return Err(malformed());
        };
        let impossible = |why: String| BetError::ImpossibleBirthdate {
            text: text.to_string(),
            why,
        };
        if !(1..=12).contains(&month) {
            return Err(impossible(format!("there is no month {month}")));
        }
        NaiveDate::from_ymd_opt(year, month, day).ok_or_else(|| {
            let days = (28..=31)
                .rev()
                .find(|&last| NaiveDate::from_ymd_opt(year, month, last).is_some())
                .unwrap_or(28);
            impossible(format!("{year:04}-{month:02} has {days} days"))
        })
    }

    proptest::proptest! {
        #[test]
        fn names_are_judged_as_before(name in "[ a\\x00-\\x20\\x7f\\u{80}-\\u{a1}\\u{2000}-\\u{2003}ñ]{0,6}") {
            proptest::prop_assert_eq!(check_name("f", &name), check_name_reference("f", &name));
        }

        #[test]
        fn birthdates_parse_as_before(text in "[0-9]{0,5}-?[0-9+ -]{0,3}-?[0-9a]{0,3}") {
            proptest::prop_assert_eq!(parse_birthdate(&text), parse_birthdate_reference(&text));
        }

        #[test]
        fn every_day_of_every_year_parses_as_before(y in 0u32..10_000, m in 0u32..14, d in 0u32..33, pad in proptest::bool::ANY) {
            let text = if pad { format!("{y:04}-{m:02}-{d:02}") } else { format!("{y:04}-{m}-{d}") };
            proptest::prop_assert_eq!(parse_birthdate(&text), parse_birthdate_reference(&text));
        }
    }

    #[test]
    fn draw_groups_winners_by_agency_in_order() {
        let mut a = bet(7574);
        a.document = "1".into();
        let mut b = bet(7574);
        b.document = "2".into();
        let bets = vec![(1, a), (2, bet(1)), (1, bet(2)), (1, b), (3, bet(7574))];
        let result = DrawResult::run(bets, 7574);
        assert_eq!(result.winners_of(1), ["1".to_string(), "2".to_string()]);
        assert!(result.winners_of(2).is_empty());
        assert_eq!(result.winners_of(3), ["30904465".to_string()]);
        assert!(result.winners_of(99).is_empty());
        assert_eq!(result.total(), 3);
    }
}
