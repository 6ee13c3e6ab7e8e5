-- The schema as the bridge wrote it before migrations became registered steps (user_version 10).
-- Never regenerate it: it stands for the databases already on disk.
CREATE TABLE cache (
            kind TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            fetched_at REAL NOT NULL,
            PRIMARY KEY (kind, key)
        );
CREATE TABLE item_attempts (
            kind TEXT NOT NULL,                 
            item_id TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT,                    
            first_failed_at REAL NOT NULL,
            last_failed_at REAL NOT NULL,
            gave_up_at REAL,                    
            reported_at REAL,                   
            PRIMARY KEY (kind, item_id)
        );
CREATE TABLE job_runs (
            job TEXT PRIMARY KEY,
            last_start REAL,
            last_success REAL,
            last_error_at REAL,
            last_error TEXT,
            last_duration_ms INTEGER
        );
CREATE TABLE links (
            kind TEXT NOT NULL,                 
            external_id TEXT NOT NULL,
            status TEXT NOT NULL DEFAULT 'pending',  
            contact_id INTEGER,
            conversation_id INTEGER,
            message_id INTEGER,
            data TEXT,                          
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, external_id)
        );
CREATE TABLE meli_auth (
            id INTEGER PRIMARY KEY CHECK (id = 1),
            user_id INTEGER,
            nickname TEXT,
            access_token TEXT,
            refresh_token TEXT,
            expires_at REAL,
            status TEXT NOT NULL DEFAULT 'missing',      
            status_reason TEXT,
            refresh_lease_owner TEXT,
            refresh_lease_until REAL NOT NULL DEFAULT 0,
            updated_at REAL
        );
CREATE TABLE notifications (
            id TEXT PRIMARY KEY,
            topic TEXT NOT NULL,
            resource TEXT NOT NULL,
            received_at REAL NOT NULL,
            processed_at REAL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            last_error TEXT
        , repeats INTEGER NOT NULL DEFAULT 0);
CREATE TABLE oauth_states (
            state TEXT PRIMARY KEY,
            code_verifier TEXT,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            used_at REAL
        );
CREATE TABLE poll_cursors (
            name TEXT PRIMARY KEY,
            value TEXT NOT NULL,                
            updated_at REAL NOT NULL
        );
CREATE TABLE replies (
            id INTEGER PRIMARY KEY,
            chatwoot_message_id INTEGER NOT NULL UNIQUE,
            conversation_id INTEGER NOT NULL,
            kind TEXT NOT NULL,                 
            target_id TEXT,                     
            status TEXT NOT NULL DEFAULT 'pending',  
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt_at REAL NOT NULL,
            lease_until REAL,
            error TEXT,                         
            note TEXT,                          
            created_at REAL NOT NULL,
            updated_at REAL NOT NULL,
            finished_at REAL,
            reported_at REAL                    
        , receiver TEXT);
CREATE TABLE reply_parts (
            reply_id INTEGER NOT NULL REFERENCES replies (id) ON DELETE CASCADE,
            seq INTEGER NOT NULL,
            text TEXT,                          
            attachments TEXT,                   
            status TEXT NOT NULL DEFAULT 'pending',  
            remote_id TEXT,
            sent_at REAL, first_attempt_at REAL,
            PRIMARY KEY (reply_id, seq)
        );
CREATE TABLE threads (
            pack_id TEXT PRIMARY KEY,
            total INTEGER,                      
            last_message_id TEXT,
            active_at REAL NOT NULL,            
            checked_at REAL,                    
            marking_since REAL                  
        );
CREATE TABLE watermarks (
            kind TEXT NOT NULL,                 
            external_id TEXT NOT NULL,          
            last_message_id TEXT,               
            last_message_at REAL,               
            closed_at REAL,                     
            updated_at REAL NOT NULL,
            PRIMARY KEY (kind, external_id)
        );
CREATE INDEX item_attempts_unreported ON item_attempts (reported_at, gave_up_at);
CREATE INDEX links_by_buyer ON links (kind, CAST(json_extract(data, '$.buyer_id') AS TEXT));
CREATE INDEX links_by_contact ON links (contact_id);
CREATE INDEX links_by_conversation ON links (conversation_id, kind);
CREATE INDEX links_by_status ON links (kind, status);
CREATE INDEX links_message_by_pack ON links (json_extract(data, '$.pack_id')) WHERE kind = 'message';
CREATE INDEX notifications_due ON notifications (processed_at, next_attempt_at);
CREATE UNIQUE INDEX notifications_pending_once ON notifications (topic, resource)
            WHERE processed_at IS NULL;
CREATE INDEX replies_by_target ON replies (kind, target_id, status);
CREATE INDEX replies_due ON replies (status, next_attempt_at);
CREATE INDEX replies_unreported ON replies (reported_at, status);
CREATE INDEX reply_parts_by_remote_id ON reply_parts (remote_id);
CREATE INDEX threads_marking ON threads (marking_since);
CREATE INDEX threads_sweep ON threads (active_at, checked_at);
PRAGMA user_version = 10;
