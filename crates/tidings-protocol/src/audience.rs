//! Audiences inside an account: which identities may see an activity.
//!
//! Every identity holds a set of **grants**: the strings its credential carries (a static
//! token's `grants`, a JWT claim, an introspection answer's `grants`) and, implicitly,
//! `user:<user>` and `session:<session>`. An activity may carry an **audience**, a list of
//! grants: a stream sees it when its identity holds at least one of them. An activity without
//! an audience is for every stream of its account.
//!
//! This module is the rule as data and functions: the bounds, the validation of one grant,
//! the two sets ([`Grants`], [`Audience`]), who is watching ([`Viewer`]) and the check
//! ([`Viewer::sees`]), which allocates nothing. It knows nothing of credentials, storage or
//! streams, and never logs (grants are never logged anywhere).

use std::sync::Arc;

/// Longest grant, in bytes: room for `session:` plus a long session id, or `user:` plus the
/// longest e-mail address (254 bytes), with margin. Grants are names, not data.
pub const GRANT_LEN_MAX: usize = 320;
/// Most grants one credential may carry (the implicit `user:` and `session:` not counted):
/// beyond it a token is refused rather than cut short, which would hide events in silence.
pub const IDENTITY_GRANTS_MAX: usize = 256;
/// Most grants in one audience: enough to name a team member by member, small enough that a
/// stored event's audience stays a small fraction of its size.
pub const AUDIENCE_GRANTS_MAX: usize = 64;
/// The implicit grant of the identity's user: `user:<user>`.
pub const USER_GRANT_PREFIX: &str = "user:";
/// The implicit grant of the identity's session: `session:<session>`.
pub const SESSION_GRANT_PREFIX: &str = "session:";
/// Separates the grants of an audience in its stored form: a control character, which no
/// grant may contain.
const STORED_SEPARATOR: char = '\n';

/// Why a grant or a set of grants was refused. The message never repeats the grant itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum GrantError {
    /// An empty string.
    #[error("a grant must not be empty")]
    Empty,
    /// Longer than [`GRANT_LEN_MAX`] bytes.
    #[error("a grant must be at most {GRANT_LEN_MAX} bytes")]
    TooLong,
    /// Holds a control character (a line break, a tab, NUL, ...).
    #[error("a grant must not contain control characters")]
    ControlCharacter,
    /// A credential's grant that starts with `user:` or `session:`: those name the identity's
    /// own user and session and are implied, never granted.
    #[error("grants starting with `user:` or `session:` are implied by the identity and cannot be granted")]
    Reserved,
    /// More than the set allows.
    #[error("at most {0} grants are accepted")]
    TooMany(usize),
    /// An audience without any grant (it would reach nobody; leave it out to address the
    /// whole account).
    #[error("an audience needs at least one grant; leave it out to address the whole account")]
    EmptyAudience,
}

/// Checks one grant as an audience may name it (`user:…` and `session:…` included).
pub fn check_grant(grant: &str) -> Result<(), GrantError> {
    if grant.is_empty() {
        return Err(GrantError::Empty);
    }
    if grant.len() > GRANT_LEN_MAX {
        return Err(GrantError::TooLong);
    }
    if grant.chars().any(char::is_control) {
        return Err(GrantError::ControlCharacter);
    }
    Ok(())
}

/// Checks one grant as a credential may carry it: [`check_grant`], and not one of the implied
/// forms.
pub fn check_identity_grant(grant: &str) -> Result<(), GrantError> {
    check_grant(grant)?;
    if grant.starts_with(USER_GRANT_PREFIX) || grant.starts_with(SESSION_GRANT_PREFIX) {
        return Err(GrantError::Reserved);
    }
    Ok(())
}

/// A 64-bit signature of a set of grants: one bit per grant, chosen by a hash. Two sets whose
/// signatures share no bit share no grant, which settles most checks of a stream against an
/// audience it is outside of without comparing a string.
fn bit(parts: &[&str]) -> u64 {
    // 64-bit FNV-1a over the parts as one string: stable, tiny, and enough to spread names.
    let h = parts.iter().flat_map(|p| p.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    1 << (h >> 58)
}

/// Sorted and without duplicates, for binary search and equality.
fn sorted<'a>(names: impl IntoIterator<Item = &'a str>) -> Box<[Box<str>]> {
    let mut v: Vec<Box<str>> = names.into_iter().map(Box::from).collect();
    v.sort_unstable();
    v.dedup();
    v.into_boxed_slice()
}

/// The grants a credential carries (without the implicit ones), sorted. Build it once per
/// credential and share it (`Arc`): every stream of that credential holds the same set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Grants {
    names: Box<[Box<str>]>,
    signature: u64,
}

impl Grants {
    /// No grant besides the implicit ones.
    pub fn none() -> Self {
        Self::default()
    }

    /// A credential's grants, each checked by [`check_identity_grant`], at most
    /// [`IDENTITY_GRANTS_MAX`] of them (duplicates count once).
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, GrantError> {
        let names = sorted(names);
        if names.len() > IDENTITY_GRANTS_MAX {
            return Err(GrantError::TooMany(IDENTITY_GRANTS_MAX));
        }
        names.iter().try_for_each(|g| check_identity_grant(g))?;
        let signature = names.iter().fold(0, |s, g| s | bit(&[g]));
        Ok(Self { names, signature })
    }

    pub fn contains(&self, grant: &str) -> bool {
        self.names.binary_search_by(|g| (**g).cmp(grant)).is_ok()
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|g| &**g)
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }
}

/// Who may see an activity: one to [`AUDIENCE_GRANTS_MAX`] grants, any one of which admits a
/// stream. Built once per event and shared by everything that delivers or replays it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Audience {
    names: Box<[Box<str>]>,
    signature: u64,
}

impl Audience {
    /// An audience of these grants, each checked by [`check_grant`] (so `user:…` and
    /// `session:…` are allowed); duplicates count once.
    pub fn new<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, GrantError> {
        let names = sorted(names);
        if names.is_empty() {
            return Err(GrantError::EmptyAudience);
        }
        if names.len() > AUDIENCE_GRANTS_MAX {
            return Err(GrantError::TooMany(AUDIENCE_GRANTS_MAX));
        }
        names.iter().try_for_each(|g| check_grant(g))?;
        let signature = names.iter().fold(0, |s, g| s | bit(&[g]));
        Ok(Self { names, signature })
    }

    /// An audience no stream is in: what an audience that cannot be read stands for (a rule
    /// that could not be compiled, a damaged stored form), so that it fails closed.
    pub fn nobody() -> Self {
        Self { names: Box::default(), signature: 0 }
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> {
        self.names.iter().map(|g| &**g)
    }

    /// The form engines store: the grants joined by a line break (which no grant contains).
    pub fn to_stored(&self) -> String {
        let mut out = String::with_capacity(self.names.iter().map(|g| g.len() + 1).sum());
        for (i, g) in self.names.iter().enumerate() {
            if i > 0 {
                out.push(STORED_SEPARATOR);
            }
            out.push_str(g);
        }
        out
    }

    /// Reads [`Audience::to_stored`]'s form back, checking it as [`Audience::new`] does.
    pub fn from_stored(text: &str) -> Result<Self, GrantError> {
        Self::new(text.split(STORED_SEPARATOR))
    }
}

/// Who is watching a stream: the identity's user and session (the implicit grants) and its
/// credential's grants, with their signature computed once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Viewer {
    user: Arc<str>,
    session: Arc<str>,
    grants: Arc<Grants>,
    signature: u64,
}

impl Viewer {
    /// An empty `user` holds no `user:` grant (a credential that names no user).
    pub fn new(user: Arc<str>, session: Arc<str>, grants: Arc<Grants>) -> Self {
        let mut signature = grants.signature | bit(&[SESSION_GRANT_PREFIX, &session]);
        if !user.is_empty() {
            signature |= bit(&[USER_GRANT_PREFIX, &user]);
        }
        Self { user, session, grants, signature }
    }

    pub fn user(&self) -> &Arc<str> {
        &self.user
    }

    pub fn session(&self) -> &Arc<str> {
        &self.session
    }

    pub fn grants(&self) -> &Arc<Grants> {
        &self.grants
    }

    /// Whether this identity holds `grant`, implicit grants included.
    pub fn holds(&self, grant: &str) -> bool {
        if let Some(user) = grant.strip_prefix(USER_GRANT_PREFIX) {
            return !self.user.is_empty() && user == &*self.user;
        }
        if let Some(session) = grant.strip_prefix(SESSION_GRANT_PREFIX) {
            return session == &*self.session;
        }
        self.grants.contains(grant)
    }

    /// Whether an activity with this audience reaches this stream: always without an
    /// audience, else when the identity holds one of its grants.
    pub fn sees(&self, audience: Option<&Audience>) -> bool {
        match audience {
            None => true,
            Some(a) => a.signature & self.signature != 0 && a.names.iter().any(|g| self.holds(g)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn viewer(user: &str, session: &str, grants: &[&str]) -> Viewer {
        Viewer::new(user.into(), session.into(), Arc::new(Grants::new(grants.iter().copied()).unwrap()))
    }

    fn audience(grants: &[&str]) -> Audience {
        Audience::new(grants.iter().copied()).unwrap()
    }

    #[test]
    fn a_stream_sees_what_it_holds_one_grant_of() {
        let alice = viewer("alice", "s-1", &["edge_firewall:read", "role:admin"]);
        assert!(alice.sees(None), "no audience: the whole account");
        assert!(alice.sees(Some(&audience(&["billing:read", "role:admin"]))));
        assert!(alice.sees(Some(&audience(&["user:alice"]))));
        assert!(alice.sees(Some(&audience(&["session:s-1"]))));
        assert!(!alice.sees(Some(&audience(&["billing:read"]))));
        assert!(!alice.sees(Some(&audience(&["user:bob", "session:s-2", "role:Admin"]))), "grants compare byte for byte");
        assert!(!alice.sees(Some(&audience(&["user:alice "]))));
        let anonymous = viewer("", "s-9", &[]);
        assert!(!anonymous.sees(Some(&audience(&["user:"]))), "no user, no user grant");
        assert!(anonymous.sees(Some(&audience(&["session:s-9"]))));
    }

    #[test]
    fn the_signature_never_hides_a_holder() {
        // Every pair of many grants: whenever the strings say yes, the check says yes.
        let names: Vec<String> = (0..300).map(|i| format!("g{i}")).collect();
        for held in names.iter().step_by(7) {
            let v = viewer("u", "s", &[held]);
            for wanted in &names {
                assert_eq!(v.sees(Some(&audience(&[wanted]))), held == wanted, "{held} / {wanted}");
            }
        }
    }

    #[test]
    fn bounds_and_forms_are_enforced() {
        assert_eq!(Audience::new([] as [&str; 0]), Err(GrantError::EmptyAudience));
        assert_eq!(Audience::new([""]), Err(GrantError::Empty));
        assert_eq!(Audience::new(["a\nb"]), Err(GrantError::ControlCharacter));
        let long = "g".repeat(GRANT_LEN_MAX + 1);
        assert_eq!(Audience::new([long.as_str()]), Err(GrantError::TooLong));
        assert!(Audience::new([&long[1..]]).is_ok());
        let many: Vec<String> = (0..=AUDIENCE_GRANTS_MAX).map(|i| format!("g{i}")).collect();
        assert_eq!(Audience::new(many.iter().map(String::as_str)), Err(GrantError::TooMany(AUDIENCE_GRANTS_MAX)));
        assert!(Audience::new(many[1..].iter().map(String::as_str).chain(["g1"])).is_ok(), "duplicates count once");
        assert_eq!(Grants::new(["user:alice"]), Err(GrantError::Reserved));
        assert_eq!(Grants::new(["session:s"]), Err(GrantError::Reserved));
        let many: Vec<String> = (0..=IDENTITY_GRANTS_MAX).map(|i| format!("g{i}")).collect();
        assert_eq!(Grants::new(many.iter().map(String::as_str)), Err(GrantError::TooMany(IDENTITY_GRANTS_MAX)));
        assert_eq!(Grants::new(["b", "a", "b"]).unwrap().iter().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn the_stored_form_reads_back() {
        let a = audience(&["user:alice@example.com", "edge firewall:read", "ünïcode"]);
        assert_eq!(Audience::from_stored(&a.to_stored()), Ok(a));
        assert_eq!(Audience::from_stored(""), Err(GrantError::Empty));
    }
}
