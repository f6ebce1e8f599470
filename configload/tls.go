package configload

import (
	"crypto/tls"
	"errors"

	"github.com/caddy-between/between/internal/clienttls"
	"github.com/caddyserver/caddy/v2"
)

// TLS configures a loader's TLS connection to its store. Paths may be
// placeholders such as {env.CA_FILE}.
type TLS struct {
	// CA certificates (PEM) that sign the server's certificate. Default:
	// the system's roots.
	CACertPath string `json:"cacert_path,omitempty"`
	// Client certificate (PEM), for a server that verifies clients. Needs
	// key_path.
	CertPath string `json:"cert_path,omitempty"`
	// Private key (PEM) of cert_path.
	KeyPath string `json:"key_path,omitempty"`
	// Do not verify the server's certificate. For tests only: anyone on
	// the path can then serve the config.
	InsecureSkipVerify bool `json:"insecure_skip_verify,omitempty"`
	// Name to verify the server's certificate against. Default: the host
	// of the address.
	ServerName string `json:"server_name,omitempty"`
}

// validate checks the settings; a nil TLS is valid (no TLS).
func (t *TLS) validate() error {
	if t == nil {
		return nil
	}
	if (t.CertPath == "") != (t.KeyPath == "") {
		return errors.New("tls.cert_path and tls.key_path: set both or neither")
	}
	return nil
}

// config loads the files; host is the server's host, the name to verify
// unless server_name is set.
func (t *TLS) config(repl *caddy.Replacer, host string) (*tls.Config, error) {
	name := t.ServerName
	if name == "" {
		name = host
	}
	cfg, err := clienttls.Config("tls.", name, repl.ReplaceKnown(t.CertPath, ""), repl.ReplaceKnown(t.KeyPath, ""), repl.ReplaceKnown(t.CACertPath, ""))
	if err != nil {
		return nil, err
	}
	cfg.InsecureSkipVerify = t.InsecureSkipVerify
	return cfg, nil
}
