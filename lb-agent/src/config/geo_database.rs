//! Reading the client location database that `[geo] database` names: kept out of
//! validation, which is pure, and done once per file (an API change that leaves the
//! database alone does not read it again).

use std::{path::Path, sync::Arc};

use super::{types::Geo, ErrorKind, FieldError};

impl Geo {
    /// Reads the database's prefixes into `database_prefixes`. A relative `database` is
    /// taken relative to the config file at `config_path`, like an include. When `loaded`
    /// already holds the same database, its prefixes are shared instead. The error names
    /// the field and the fix.
    pub fn load_database(
        &mut self,
        config_path: &Path,
        loaded: Option<&Geo>,
    ) -> Result<(), FieldError> {
        if let Some(db) = &mut self.database {
            if db.is_relative() {
                if let Some(dir) = config_path.parent() {
                    *db = dir.join(&*db);
                }
            }
        }
        if let Some(g) = loaded.filter(|g| g.database.is_some() && g.database == self.database) {
            self.database_prefixes = g.database_prefixes.clone();
            return Ok(());
        }
        if let Some(db) = &self.database {
            let prefixes = crate::geo::load_mmdb(db).map_err(|e| {
                FieldError::new(
                    ErrorKind::Invalid,
                    "geo.database",
                    e.to_string(),
                    "give the path of a MaxMind DB file (GeoLite2-Country.mmdb or one in its format)",
                )
            })?;
            self.database_prefixes = Arc::new(prefixes);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use crate::config::testing::*;

    #[test]
    fn geo_database_must_be_readable() {
        let e = geo_with("database = \"/nonexistent/lb-test.mmdb\"");
        assert_one(&e, "geo.database");
        assert!(e[0].contains("/nonexistent/lb-test.mmdb"), "{e:?}");
    }
}
