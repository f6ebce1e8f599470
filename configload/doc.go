// Package configload holds Caddy config loaders that read Caddy's whole
// config from one key of a key-value store and follow that key:
// caddy.config_loaders.between_consul (Consul KV, blocking queries) and
// caddy.config_loaders.between_etcd (etcd v3, watch). Every Caddy instance
// that follows a key runs the key's value within moments of each change —
// a fleet is configured by writing one key.
//
// # Bootstrap
//
// An instance starts from a bootstrap config that names the loader in
// admin.config.load, with a positive load_delay:
//
//	{"admin": {"config": {
//		"load": {"module": "between_consul", "key": "between/config"},
//		"load_delay": "100ms"
//	}}}
//
// After load_delay Caddy calls the loader's LoadConfig in a goroutine of
// the bootstrap config. (Without load_delay Caddy calls it synchronously
// while it loads the bootstrap, holding the lock that caddy.Load takes: the
// loader then only reads the key and returns its value for Caddy to apply,
// and a missing key, a value that does not adapt or an unreachable store
// fails the start.)
//
// # How a value is applied
//
// Caddy's own loop (caddy.go, finishSettingUp) would apply a config that
// LoadConfig returns, but when that config fails to load it logs the error
// and ends the loop: the instance would stop following the key. So the
// loader applies each value itself, with caddy.Load, and uses Caddy's loop
// only to be called and to have read errors logged and retried:
//
//  1. The value is adapted to JSON with adapter (when set; the key is the
//     file name) and the loader is written into its admin.config.load with
//     load_delay 100ms, so the config that runs follows the key in turn.
//     A value that names its own admin.config.load keeps it and its
//     load_delay, and hands the following over to that loader. Every other
//     admin field of the value is kept: the value's admin section is the one
//     that runs (admin.listen defaults to localhost:2019 like any Caddy
//     config; placeholders such as {env.ADMIN} give each instance its own).
//  2. caddy.Load runs it. On success the old config stops — including the
//     goroutine that called LoadConfig, which returns nil (Caddy logs
//     "dynamically-loaded config was nil; will retry", then "stopping dynamic
//     config loading") — and the new config's loader takes over.
//  3. A value that fails to adapt or to load is logged ("config from the key
//     rejected" or "failed to load") with the store's index; the running
//     config stays and the loader waits for the next change of the key. The
//     same bad value is not tried again.
//
// Which values are applied: the first LoadConfig of a loader that was not
// provisioned by its own apply (the bootstrap at start, a config POSTed to
// /load or reloaded from a file that names the loader, `caddy run --resume`)
// reads the key and applies it at once. A loader provisioned by its own
// apply (a loader's process state records that) waits for a change first:
// the Consul loader with a blocking query from the index of the last read,
// the etcd loader with a watch from the revision after the last read. So a
// change written while the new config starts is not lost, and a value equal
// to the last one (same bytes) causes no reload. What a loader last read
// lives in a caddy.UsagePool keyed by the loader's JSON; it goes when no
// config names the loader any more.
//
// # Failures
//
//   - Missing key: the first call returns an error naming the key (Caddy
//     logs "failed loading dynamic config; will retry") and the next call
//     waits until the key is written. A key deleted later is logged; the
//     running config stays.
//   - Store unreachable: LoadConfig returns the error — at once when the
//     connection is refused; for a blocking query of Consul within wait plus
//     10s; for etcd when gRPC reports the connection lost, or a read times
//     out after dial_timeout. Caddy logs it and calls again after load_delay;
//     each call after a failure first pauses 250ms, doubling up to 5s, then
//     reads the key (a plain read, not a wait) and applies it if it differs
//     from the last value. The running config keeps serving throughout.
//   - A failed load (see 3): logged; the running config stays.
//
// Credentials and paths in the loader may be placeholders ({env.*},
// {file.*}); the loader written into applied configs keeps the
// placeholders, never the secrets.
package configload
