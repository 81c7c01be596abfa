//! The same storage cases on SQLite and PostgreSQL.

use crate::common::*;
use xmppd::storage::{
    AccountCredentials, ArchiveQuery, NewArchived, RosterItem, Storage, Subscription,
};

async fn exercise(url: &str) {
    let st = Storage::open(url, None).await.unwrap();
    // Migrations are idempotent.
    let st2 = Storage::open(url, None).await.unwrap();
    let a = &st.accounts;
    let creds = AccountCredentials::from_password("pw");
    assert!(a.create_account("alice@localhost", &creds).await.unwrap());
    assert!(!a.create_account("alice@localhost", &creds).await.unwrap());
    assert_eq!(
        st2.accounts.credentials("alice@localhost").await.unwrap(),
        Some(creds.clone())
    );
    let c = a.credentials("alice@localhost").await.unwrap().unwrap();
    assert!(c.sha1.verify_password(xmppd::sasl::HashAlg::Sha1, "pw"));
    assert!(!c.sha256.verify_password(xmppd::sasl::HashAlg::Sha256, "PW"));
    assert!(a.create_account("bob@other.example", &creds).await.unwrap());
    assert_eq!(
        a.list_accounts(Some("localhost")).await.unwrap(),
        vec!["alice@localhost"]
    );
    assert_eq!(a.list_accounts(None).await.unwrap().len(), 2);
    let new = AccountCredentials::from_password("pw2");
    assert!(a.set_credentials("alice@localhost", &new).await.unwrap());
    assert!(!a.set_credentials("ghost@localhost", &new).await.unwrap());

    let r = &st.roster;
    assert_eq!(r.roster_version("alice@localhost").await.unwrap(), 0);
    let mut item = RosterItem::new("bob@localhost");
    item.in_roster = true;
    item.subscription = Subscription::Both;
    item.name = Some("Bob \u{1F600}".into());
    item.groups = vec!["Friends".into(), "Work".into()];
    let v1 = r.put_roster_item("alice@localhost", &item).await.unwrap();
    let v2 = r.put_roster_item("alice@localhost", &item).await.unwrap();
    assert!(v2 > v1);
    assert_eq!(
        r.roster_item("alice@localhost", "bob@localhost")
            .await
            .unwrap(),
        Some(item.clone())
    );
    let (ver, items) = r.roster("alice@localhost").await.unwrap();
    assert_eq!((ver, items), (v2, vec![item.clone()]));
    // An item with no state left is removed.
    let v3 = r
        .put_roster_item("alice@localhost", &RosterItem::new("bob@localhost"))
        .await
        .unwrap();
    assert!(v3 > v2);
    assert!(r.roster("alice@localhost").await.unwrap().1.is_empty());

    st.vcards
        .set_vcard("alice@localhost", "<vCard xmlns='vcard-temp'/>")
        .await
        .unwrap();
    st.vcards
        .set_vcard(
            "alice@localhost",
            "<vCard xmlns='vcard-temp'><FN>A</FN></vCard>",
        )
        .await
        .unwrap();
    assert_eq!(
        st.vcards.vcard("alice@localhost").await.unwrap().as_deref(),
        Some("<vCard xmlns='vcard-temp'><FN>A</FN></vCard>")
    );

    // An archive batch that repeats an (owner, id) keeps the first row and
    // stores the rest of the batch: the repeat is skipped, not an error.
    let row = |id: &str, body: &str| NewArchived {
        owner: "alice@localhost".into(),
        stanza_id: id.into(),
        with: "bob@localhost".into(),
        stanza: format!("<message><body>{body}</body></message>"),
        created_at: 1,
    };
    st.archive
        .archive(&[row("s1", "first"), row("s1", "again"), row("s2", "second")])
        .await
        .unwrap();
    let page = st
        .archive
        .query_archive(
            "alice@localhost",
            &ArchiveQuery {
                max: 10,
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let kept: Vec<(&str, &str)> = page
        .items
        .iter()
        .map(|i| (i.stanza_id.as_str(), i.stanza.as_str()))
        .collect();
    assert_eq!(
        kept,
        vec![
            ("s1", "<message><body>first</body></message>"),
            ("s2", "<message><body>second</body></message>")
        ]
    );

    r.put_roster_item("alice@localhost", &item).await.unwrap();
    assert!(a.delete_account("alice@localhost").await.unwrap());
    assert!(!a.delete_account("alice@localhost").await.unwrap());
    assert!(r.roster("alice@localhost").await.unwrap().1.is_empty());
    assert_eq!(st.vcards.vcard("alice@localhost").await.unwrap(), None);
}

#[tokio::test]
async fn storage_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    exercise(&format!(
        "sqlite://{}",
        dir.path().join("nested/dir/x.db").display()
    ))
    .await;
}

#[tokio::test]
async fn storage_postgres() {
    exercise(&pg_database().await).await;
}
