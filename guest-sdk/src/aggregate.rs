//! Event-sourced aggregates over serde structs: implement [`Aggregate`] for a struct and it gets
//! `create`, `get`, `find`; a [`Stored`] value can be changed and `save`d. Every write is an
//! event; the host publishes `{Name}Created`, `{Name}Updated`, `{Name}Deleted`.

use std::ops::{Deref, DerefMut};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

use crate::bindings::saga::host::storage;
use crate::{Condition, Error, Ordering, Result};

/// An aggregate type. Its fields are the struct's serde fields.
pub trait Aggregate: Serialize + DeserializeOwned + Sized {
    /// The type's name, e.g. "Exam".
    const NAME: &'static str;
    /// Fields whose equality conditions should be answered from an index.
    const INDEXES: &'static [&'static str] = &[];

    /// Stores a new aggregate with a new uuid (the host makes a UUIDv7: random, ordered by time).
    fn create(self) -> Result<Stored<Self>> {
        let data = serde_json::to_string(&self)?;
        Stored::from_wit(storage::create(Self::NAME, None, &data)?)
    }

    /// Stores a new aggregate under a chosen uuid. A name-based uuid (`Uuid::new_v5`) makes
    /// concurrent creators of the same logical aggregate collide, so that only one succeeds:
    /// when the uuid was created by another writer while this call ran (the call had found it
    /// absent), the host runs the call again rather than answer it. A plain duplicate — a uuid
    /// the call never looked for, or a deleted aggregate's (a uuid is never reused) — is
    /// refused with an error whose [`Error::is_conflict`] holds.
    fn create_with_uuid(self, uuid: Uuid) -> Result<Stored<Self>> {
        let data = serde_json::to_string(&self)?;
        Stored::from_wit(storage::create(
            Self::NAME,
            Some(crate::uuid_text(&uuid, &mut Uuid::encode_buffer())),
            &data,
        )?)
    }

    /// Reads one aggregate; when there is none, an error whose [`Error::is_not_found`] holds.
    fn get(uuid: Uuid) -> Result<Stored<Self>> {
        Stored::from_wit(storage::get(
            Self::NAME,
            crate::uuid_text(&uuid, &mut Uuid::encode_buffer()),
        )?)
    }

    /// The aggregates that satisfy `condition`, in creation order, at most `limit`.
    fn find(condition: Condition, limit: Option<u32>) -> Result<Vec<Stored<Self>>> {
        Self::find_ordered(condition, &[], limit)
    }

    /// Like `find`, sorted by `ordering`.
    fn find_ordered(
        condition: Condition,
        ordering: &[Ordering],
        limit: Option<u32>,
    ) -> Result<Vec<Stored<Self>>> {
        let ordering: Vec<_> = ordering.iter().map(Ordering::to_wit).collect();
        storage::find(Self::NAME, &condition.to_nodes(), &ordering, limit)?
            .into_iter()
            .map(Stored::from_wit)
            .collect()
    }
}

/// An aggregate as stored: its uuid, version and timestamps, and its fields (reachable through
/// `Deref`, so `exam.user_uuid` works). Serialises flat, as Minos does:
/// `{"uuid": …, "version": 1, "created_at": …, "updated_at": …, "user_uuid": …}`.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored<T> {
    pub uuid: Uuid,
    pub version: u64,
    /// Milliseconds since the Unix epoch.
    pub created_at: u64,
    pub updated_at: u64,
    pub data: T,
}

impl<T: Aggregate> Stored<T> {
    fn from_wit(aggregate: storage::Aggregate) -> Result<Self> {
        Ok(Stored {
            uuid: Uuid::parse_str(&aggregate.uuid)
                .map_err(|e| Error::system(format!("the host returned a bad uuid: {e}")))?,
            version: aggregate.version,
            created_at: aggregate.created_at,
            updated_at: aggregate.updated_at,
            data: serde_json::from_str(&aggregate.data).map_err(|e| {
                Error::system(format!(
                    "a stored {} does not fit its Rust type: {e}",
                    T::NAME
                ))
            })?,
        })
    }

    /// Writes the changed fields as an update event, if the aggregate is still at the version
    /// it was read at. When another writer changed it since this call read it, the host runs
    /// the call again; otherwise a changed aggregate is an error whose [`Error::is_conflict`]
    /// holds.
    pub fn save(&mut self) -> Result<()> {
        let fields = serde_json::to_string(&self.data)?;
        let updated = storage::update(
            T::NAME,
            crate::uuid_text(&self.uuid, &mut Uuid::encode_buffer()),
            Some(self.version),
            &fields,
        )?;
        self.version = updated.version;
        self.updated_at = updated.updated_at;
        Ok(())
    }

    /// Deletes the aggregate (a delete event; it is gone from `get` and `find`).
    pub fn delete(self) -> Result<()> {
        storage::delete(
            T::NAME,
            crate::uuid_text(&self.uuid, &mut Uuid::encode_buffer()),
            Some(self.version),
        )?;
        Ok(())
    }
}

impl<T> Deref for Stored<T> {
    type Target = T;

    fn deref(&self) -> &T {
        &self.data
    }
}

impl<T> DerefMut for Stored<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.data
    }
}

#[derive(Serialize, Deserialize)]
struct Flat<T> {
    uuid: Uuid,
    version: u64,
    created_at: u64,
    updated_at: u64,
    #[serde(flatten)]
    data: T,
}

impl<T: Serialize> Serialize for Stored<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Flat {
            uuid: self.uuid,
            version: self.version,
            created_at: self.created_at,
            updated_at: self.updated_at,
            data: &self.data,
        }
        .serialize(serializer)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Stored<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let flat = Flat::<T>::deserialize(deserializer)?;
        Ok(Stored {
            uuid: flat.uuid,
            version: flat.version,
            created_at: flat.created_at,
            updated_at: flat.updated_at,
            data: flat.data,
        })
    }
}
