// Package sharedstorage holds Caddy storage modules that keep certmagic's
// data (certificates, keys, ACME accounts, OCSP staples) and its locks in a
// key-value engine that every instance of a fleet reaches:
// caddy.storage.between_etcd (etcd v3) and caddy.storage.between_consul
// (Consul KV). Instances that share one of them obtain a certificate once,
// load what another instance obtained, and serialize ACME work through
// locks that expire when their holder dies.
//
// Values are stored as they are (a certificate is PEM under its key), so
// etcdctl and consul kv show them. Data lives under the prefix (default
// "caddy/"); locks, and for etcd the modification times, live beside it
// under the same prefix with ".locks/" and ".meta/" in place of the final
// "/" ("caddy.locks/", "caddy.meta/"), out of List's reach.
package sharedstorage
