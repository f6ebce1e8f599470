// Package clienttls builds the TLS settings of a client that talks to a
// registry or a key-value store (Consul, Docker, etcd) from PEM files named
// in a Caddy config, with errors that name the config fields.
package clienttls

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// Config builds the TLS settings of a client: a client certificate
// (certPath and keyPath, both or neither) and the CA that signs the server's
// certificate (caPath; the system roots when ""). fieldPrefix is what the
// config's field names start with before cert_path, key_path and
// cacert_path ("consul_tls_", "tls."), so that errors name the fields the
// user wrote.
func Config(fieldPrefix, serverName, certPath, keyPath, caPath string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if certPath != "" || keyPath != "" {
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, fmt.Errorf("%scert_path %q, %skey_path %q: %w", fieldPrefix, certPath, fieldPrefix, keyPath, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if caPath != "" {
		pem, err := os.ReadFile(caPath)
		if err != nil {
			return nil, fmt.Errorf("%scacert_path: %w", fieldPrefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%scacert_path %q: no PEM certificate in the file", fieldPrefix, caPath)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
