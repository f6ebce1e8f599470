package l4handler

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// BackendsTLS makes the handler speak TLS to its backends: after the TCP dial
// it runs a TLS client handshake, and the client's bytes travel encrypted to
// the backend. With caddy-l4's `tls` handler before `between` this
// re-encrypts; without it a plain-TCP client reaches a TLS-only backend.
//
// Server certificates are verified (against the system's roots, or
// root_ca_cert_path) unless ignore_verify is set. A failed handshake counts
// as a failed dial: the backend's refused counter and passive health see it,
// and the client is retried on another backend.
type BackendsTLS struct {
	// Accept any server certificate, without verifying its chain or name.
	// For tests and trusted networks only.
	IgnoreVerify bool `json:"ignore_verify,omitempty"`
	// PEM file of the certificate authorities that sign the backends'
	// certificates; they replace the system's roots. Default: system roots.
	RootCACertPath string `json:"root_ca_cert_path,omitempty"`
	// PEM client certificate (with its chain) presented to backends that ask
	// for one (mutual TLS). Needs key_path.
	CertPath string `json:"cert_path,omitempty"`
	// PEM private key of cert_path. Needs cert_path.
	KeyPath string `json:"key_path,omitempty"`
	// Lowest TLS version offered: "1.2" (default) or "1.3".
	MinVersion string `json:"min_version,omitempty"`
	// Highest TLS version offered: "1.2" or "1.3" (default).
	MaxVersion string `json:"max_version,omitempty"`
	// TLS 1.2 cipher suites offered, in order of preference, by their Go
	// names (e.g. "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"). Default: Go's
	// secure list. TLS 1.3 suites are not configurable.
	Ciphers []string `json:"ciphers,omitempty"`
	// Resume TLS sessions with tickets the backends hand out, which saves a
	// full handshake per connection. Default true; the session cache is
	// shared by all connections of this handler (up to 256 sessions).
	SessionTickets *bool `json:"session_tickets,omitempty"`
	// Server name sent in SNI and checked against the backend's certificate.
	// Default: the backend's sni attribute, else its host. For an IP host
	// with no sni, no SNI is sent and the certificate must carry the IP
	// address.
	ServerName string `json:"server_name,omitempty"`

	base    *tls.Config
	mu      sync.Mutex
	byName  map[string]*tls.Config // base with ServerName set, one per name in use
	timeout time.Duration          // handshake limit
}

// tlsVersions maps the accepted version strings to Go's constants.
var tlsVersions = map[string]uint16{"1.2": tls.VersionTLS12, "1.3": tls.VersionTLS13}

// sessionCacheSize bounds the per-handler TLS session cache.
const sessionCacheSize = 256

// maxCachedConfigs bounds the per-name configs kept; beyond it (a discovery
// that churns through names) each connection clones its own.
const maxCachedConfigs = 4096

// defaultHandshakeTimeout limits a handshake when backend_connection_timeout
// is 0: a backend that accepts but never answers must not hold clients forever.
const defaultHandshakeTimeout = 10 * time.Second

// provision checks the fields and builds the client config once, reading
// every file now so that connections never touch the file system.
func (t *BackendsTLS) provision(handshakeTimeout time.Duration) error {
	cfg := &tls.Config{InsecureSkipVerify: t.IgnoreVerify}
	if t.RootCACertPath != "" {
		pemBytes, err := os.ReadFile(t.RootCACertPath)
		if err != nil {
			return fmt.Errorf("backends_tls.root_ca_cert_path: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pemBytes) {
			return fmt.Errorf("backends_tls.root_ca_cert_path %s: no PEM certificate in it", t.RootCACertPath)
		}
		cfg.RootCAs = pool
	}
	switch {
	case t.CertPath != "" && t.KeyPath != "":
		cert, err := tls.LoadX509KeyPair(t.CertPath, t.KeyPath)
		if err != nil {
			return fmt.Errorf("backends_tls.cert_path/key_path: %w", err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	case t.CertPath != "":
		return fmt.Errorf("backends_tls.cert_path: needs key_path too")
	case t.KeyPath != "":
		return fmt.Errorf("backends_tls.key_path: needs cert_path too")
	}
	cfg.MinVersion = tls.VersionTLS12
	if t.MinVersion != "" {
		v, ok := tlsVersions[t.MinVersion]
		if !ok {
			return fmt.Errorf("backends_tls.min_version %q: want \"1.2\" or \"1.3\"", t.MinVersion)
		}
		cfg.MinVersion = v
	}
	if t.MaxVersion != "" {
		v, ok := tlsVersions[t.MaxVersion]
		if !ok {
			return fmt.Errorf("backends_tls.max_version %q: want \"1.2\" or \"1.3\"", t.MaxVersion)
		}
		cfg.MaxVersion = v
		if v < cfg.MinVersion {
			return fmt.Errorf("backends_tls.max_version %s: below min_version %s", t.MaxVersion, t.MinVersion)
		}
	}
	if len(t.Ciphers) > 0 {
		if cfg.MinVersion >= tls.VersionTLS13 {
			return fmt.Errorf("backends_tls.ciphers: apply to TLS 1.2 only, but min_version is %s", t.MinVersion)
		}
		for _, name := range t.Ciphers {
			id, ok := cipherSuite(name)
			if !ok {
				return fmt.Errorf("backends_tls.ciphers: unknown cipher suite %q", name)
			}
			cfg.CipherSuites = append(cfg.CipherSuites, id)
		}
	}
	if t.SessionTickets == nil || *t.SessionTickets {
		cfg.ClientSessionCache = tls.NewLRUClientSessionCache(sessionCacheSize)
	} else {
		cfg.SessionTicketsDisabled = true
	}
	t.base = cfg
	t.byName = make(map[string]*tls.Config)
	t.timeout = handshakeTimeout
	if t.timeout <= 0 {
		t.timeout = defaultHandshakeTimeout
	}
	return nil
}

// cipherSuite finds a TLS 1.2 cipher suite by its Go name.
func cipherSuite(name string) (uint16, bool) {
	for _, list := range [][]*tls.CipherSuite{tls.CipherSuites(), tls.InsecureCipherSuites()} {
		for _, s := range list {
			if s.Name == name && !onlyTLS13(s) {
				return s.ID, true
			}
		}
	}
	return 0, false
}

func onlyTLS13(s *tls.CipherSuite) bool {
	for _, v := range s.SupportedVersions {
		if v != tls.VersionTLS13 {
			return false
		}
	}
	return true
}

// serverName is the name the handshake with b sends and verifies.
func (t *BackendsTLS) serverName(b *backend.Backend) string {
	switch {
	case t.ServerName != "":
		return t.ServerName
	case b.SNI != "":
		return b.SNI
	}
	return b.Host
}

// config returns the client config for name. Configs are made once per name
// and shared, so that a connection allocates none.
func (t *BackendsTLS) config(name string) *tls.Config {
	t.mu.Lock()
	defer t.mu.Unlock()
	if c, ok := t.byName[name]; ok {
		return c
	}
	c := t.base.Clone() // shares the session cache
	// Go sends no SNI for an IP address and verifies it against the IP SANs.
	c.ServerName = name
	if len(t.byName) < maxCachedConfigs {
		t.byName[name] = c
	}
	return c
}

// handshake runs the TLS client handshake with b over conn within the
// handshake limit. On failure conn is closed.
func (t *BackendsTLS) handshake(conn net.Conn, b *backend.Backend) (net.Conn, error) {
	tc := tls.Client(conn, t.config(t.serverName(b)))
	// a deadline rather than a context: no goroutine or timer per handshake
	conn.SetDeadline(time.Now().Add(t.timeout))
	if err := tc.Handshake(); err != nil {
		conn.Close()
		return nil, fmt.Errorf("TLS handshake: %w", err)
	}
	conn.SetDeadline(time.Time{})
	return tc, nil
}

// parseBackendsTLS reads the backends_tls block:
//
//	backends_tls {
//		ignore_verify
//		root_ca_cert_path FILE
//		cert_path FILE
//		key_path FILE
//		min_version 1.2|1.3
//		max_version 1.2|1.3
//		ciphers NAME...
//		session_tickets on|off
//		server_name NAME
//	}
func parseBackendsTLS(d *caddyfile.Dispenser) (*BackendsTLS, error) {
	t := new(BackendsTLS)
	if d.NextArg() {
		return nil, d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		var err error
		switch d.Val() {
		case "ignore_verify":
			if d.NextArg() {
				return nil, d.Errf("backends_tls: ignore_verify takes no argument")
			}
			t.IgnoreVerify = true
		case "root_ca_cert_path":
			err = oneArg(d, &t.RootCACertPath)
		case "cert_path":
			err = oneArg(d, &t.CertPath)
		case "key_path":
			err = oneArg(d, &t.KeyPath)
		case "min_version":
			err = oneArg(d, &t.MinVersion)
		case "max_version":
			err = oneArg(d, &t.MaxVersion)
		case "server_name":
			err = oneArg(d, &t.ServerName)
		case "ciphers":
			args := d.RemainingArgs()
			if len(args) == 0 {
				return nil, d.Errf("backends_tls: ciphers needs at least one cipher suite name")
			}
			t.Ciphers = append(t.Ciphers, args...)
		case "session_tickets":
			var v string
			if err = oneArg(d, &v); err == nil {
				switch v {
				case "on":
					t.SessionTickets = new(true)
				case "off":
					t.SessionTickets = new(false)
				default:
					return nil, d.Errf("backends_tls: session_tickets %q: want on or off", v)
				}
			}
		default:
			return nil, d.Errf("backends_tls: unknown subdirective %q", d.Val())
		}
		if err != nil {
			return nil, err
		}
	}
	return t, nil
}
