// Package rulestore keeps accounts' CORS rules in a certmagic.Storage
// shared by a fleet of servers (docs/store.md): a head and a log of
// changes, one record per account, a base for new servers, a local
// snapshot for restarts, a storage lock for writers, an immutable view
// per change for lock-free lookups, and per-account edits with If-Match
// and a history. It knows nothing of Caddy's modules or contexts: it
// takes a storage, a logger and a data directory, and serves the
// policy's lookups as a policy.Source.
package rulestore
