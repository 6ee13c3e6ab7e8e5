"""Per-subject stores hanging off the Database (db.auth, …): the SQL of one subject each."""
