package sharedstorage

import (
	"crypto/tls"
	"fmt"

	"github.com/caddy-between/between/internal/clienttls"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// TLS configures TLS from Caddy to the storage engine, with the field
// names of Between's other TLS clients (discovery, config loaders). Its
// presence turns TLS on. The paths accept Caddy's global placeholders
// ({env.*}, {file.*}).
type TLS struct {
	// CA certificates (PEM) that the engine's server certificate must
	// chain to. Default: the system's roots.
	CACertPath string `json:"cacert_path,omitempty"`
	// Client certificate (PEM), for engines that verify clients. Requires
	// key_path.
	CertPath string `json:"cert_path,omitempty"`
	// Private key (PEM) of cert_path. Requires cert_path.
	KeyPath string `json:"key_path,omitempty"`
	// Do not verify the engine's certificate. For tests only: anyone on
	// the path can then read and change the stored private keys.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
	// Name to verify in the engine's certificate, when it differs from the
	// host that Caddy dials.
	ServerName string `json:"server_name,omitempty"`
}

// validate checks the settings; field is the JSON path of the block.
func (t *TLS) validate(field string) error {
	if t == nil {
		return nil
	}
	if (t.CertPath == "") != (t.KeyPath == "") {
		return fmt.Errorf("%s.cert_path and %s.key_path: set both or neither", field, field)
	}
	return nil
}

// config loads the files into a client TLS configuration.
func (t *TLS) config() (*tls.Config, error) {
	repl := caddy.NewReplacer()
	cfg, err := clienttls.Config("tls.", repl.ReplaceKnown(t.ServerName, ""),
		repl.ReplaceKnown(t.CertPath, ""), repl.ReplaceKnown(t.KeyPath, ""), repl.ReplaceKnown(t.CACertPath, ""))
	if err != nil {
		return nil, err
	}
	cfg.InsecureSkipVerify = t.InsecureSkipVerify
	return cfg, nil
}

// unmarshalCaddyfile reads the tls block:
//
//	tls {
//		cacert_path PATH
//		cert_path PATH
//		key_path PATH
//		insecure_skip_verify
//		server_name NAME
//	}
func (t *TLS) unmarshalCaddyfile(d *caddyfile.Dispenser) error {
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var dst *string
		switch d.Val() {
		case "cacert_path":
			dst = &t.CACertPath
		case "cert_path":
			dst = &t.CertPath
		case "key_path":
			dst = &t.KeyPath
		case "server_name":
			dst = &t.ServerName
		case "insecure_skip_verify":
			if d.NextArg() {
				return d.ArgErr()
			}
			t.InsecureSkipVerify = true
			continue
		default:
			return d.Errf("tls: unknown option %q", d.Val())
		}
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}
