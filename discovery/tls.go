package discovery

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
)

// clientTLS builds the TLS settings of a source that connects to its
// registry over TLS: a client certificate (certPath and keyPath, both or
// neither) and the CA that signs the server's certificate (caPath; the
// system roots when ""). prefix is the kind's JSON field prefix ("consul",
// "docker", "etcd"), so that errors name the fields the user wrote.
func clientTLS(prefix, serverName, certPath, keyPath, caPath string) (*tls.Config, error) {
	cfg := &tls.Config{ServerName: serverName, MinVersion: tls.VersionTLS12}
	if certPath != "" || keyPath != "" {
		cert, err := tls.LoadX509KeyPair(certPath, keyPath)
		if err != nil {
			return nil, fmt.Errorf("%s_tls_cert_path %q, %s_tls_key_path %q: %w", prefix, certPath, prefix, keyPath, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	if caPath != "" {
		pem, err := os.ReadFile(caPath)
		if err != nil {
			return nil, fmt.Errorf("%s_tls_cacert_path: %w", prefix, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s_tls_cacert_path %q: no PEM certificate in the file", prefix, caPath)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}
