package discovery

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(LXD{})
}

// LXD discovers the running instances (containers and virtual machines) of
// an LXD server through its REST API, over the local unix socket or over
// HTTPS with a client certificate. Each running instance that passes the
// label filter becomes one backend: its address on the chosen network
// interface and the configured port, weight 1, priority 1.
//
// Instance config keys (labels, port, interface, SNI) are read from the
// instance's expanded config, so keys set on a profile count too. An instance
// without a usable port or address is skipped and logged, never turned into
// an empty host or port 0.
//
// LXD has no push channel that Between uses, so set interval (for example
// "2s") for the list to follow instances that start and stop.
type LXD struct {
	Common
	// Where the LXD API is: "unix:///path/to/unix.socket" or
	// "https://host[:port]" (port 8443 when omitted). Default
	// "unix:///var/lib/lxd/unix.socket" (Debian's LXD; the snap's socket is
	// /var/snap/lxd/common/lxd/unix.socket).
	ServerAddress string `json:"lxd_server_address,omitempty"`
	// HTTPS only: the name under which the server's certificate is kept in
	// lxd_config_directory/servercerts/NAME.crt. Default "local".
	ServerRemoteName string `json:"lxd_server_remote_name,omitempty"`
	// HTTPS only: a trust password (core.trust_password) or a trust token
	// (`lxc config trust add`) that adds the client certificate to the
	// server's trust store when the server does not trust it yet.
	ServerRemotePassword string `json:"lxd_server_remote_password,omitempty"`
	// HTTPS only: the directory with client.crt and client.key, and
	// servercerts/ with the pinned server certificates (the layout of lxc's
	// own config directory). Default "$HOME/.config/lxc".
	ConfigDirectory string `json:"lxd_config_directory,omitempty"`
	// HTTPS only: create client.crt and client.key in lxd_config_directory
	// when they do not exist. Otherwise they must be there.
	GenerateClientCerts bool `json:"lxd_generate_client_certs,omitempty"`
	// HTTPS only: when no certificate is pinned for the server and its
	// certificate does not verify against the system's roots, accept the
	// certificate the server presents and pin it in
	// lxd_config_directory/servercerts/NAME.crt (trust on first use).
	AcceptServerCert bool `json:"lxd_accept_server_cert,omitempty"`
	// Only instances whose config has this key (for example
	// "user.between.pool") are backends. Empty: every running instance.
	ContainerLabelKey string `json:"lxd_container_label_key,omitempty"`
	// With lxd_container_label_key: the key's value must be exactly this.
	// Empty: any value.
	ContainerLabelValue string `json:"lxd_container_label_value,omitempty"`
	// The backend port for every instance, unless lxd_container_port_key
	// overrides it.
	ContainerPort int `json:"lxd_container_port,omitempty"`
	// An instance config key (for example "user.between.port") whose value is
	// the instance's backend port; it overrides lxd_container_port.
	ContainerPortKey string `json:"lxd_container_port_key,omitempty"`
	// The instance's network interface whose address is the backend host, as
	// named inside the instance. Default "eth0".
	ContainerInterface string `json:"lxd_container_interface,omitempty"`
	// An instance config key whose value names the interface for that
	// instance; it overrides lxd_container_interface.
	ContainerInterfaceKey string `json:"lxd_container_interface_key,omitempty"`
	// An instance config key whose value is the backend's sni attribute.
	ContainerSNIKey string `json:"lxd_container_sni_key,omitempty"`
	// Which address of the interface: "IPv4" (default) or "IPv6".
	// Link-local addresses are never used.
	ContainerAddressType string `json:"lxd_container_address_type,omitempty"`

	logger *zap.Logger
	conn   *lxdConn // set by Provision
}

// lxdConn is the run-time state of an LXD source.
type lxdConn struct {
	mu      sync.Mutex
	client  *http.Client      // nil until connected; reset after a failure
	base    string            // URL prefix of the API
	skipped map[string]string // instance -> reason of its last logged skip
}

// lxdDefaultAddress is the socket of Debian's LXD package.
const lxdDefaultAddress = "unix:///var/lib/lxd/unix.socket"

// CaddyModule returns the Caddy module information.
func (LXD) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.lxd",
		New: func() caddy.Module { return new(LXD) },
	}
}

// Provision sets the defaults.
func (l *LXD) Provision(ctx caddy.Context) error {
	l.logger = ctx.Logger()
	l.conn = new(lxdConn)
	if l.ServerAddress == "" {
		l.ServerAddress = lxdDefaultAddress
	}
	if l.ServerRemoteName == "" {
		l.ServerRemoteName = "local"
	}
	if l.ConfigDirectory == "" {
		if home, err := os.UserHomeDir(); err == nil {
			l.ConfigDirectory = filepath.Join(home, ".config", "lxc")
		}
	}
	if l.ContainerInterface == "" {
		l.ContainerInterface = "eth0"
	}
	if l.ContainerAddressType == "" {
		l.ContainerAddressType = "IPv4"
	}
	return nil
}

// Validate checks the settings.
func (l *LXD) Validate() error {
	addr := l.ServerAddress
	if addr == "" {
		addr = lxdDefaultAddress
	}
	socket, _, err := parseLXDAddress(addr)
	if err != nil {
		return fmt.Errorf("lxd_server_address %q: %w", addr, err)
	}
	if socket == "" {
		if l.ConfigDirectory == "" {
			return fmt.Errorf("lxd_config_directory: required for an https server address (no home directory to default to)")
		}
		if n := l.ServerRemoteName; n != "" && (strings.ContainsAny(n, `/\`) || n == "." || n == "..") {
			return fmt.Errorf("lxd_server_remote_name %q: must be a plain file name", n)
		}
	}
	switch l.ContainerAddressType {
	case "", "IPv4", "IPv6":
	default:
		return fmt.Errorf("lxd_container_address_type %q: want IPv4 or IPv6", l.ContainerAddressType)
	}
	if l.ContainerPort < 0 || l.ContainerPort > 65535 {
		return fmt.Errorf("lxd_container_port %d: must be from 1 to 65535", l.ContainerPort)
	}
	if l.ContainerPort == 0 && l.ContainerPortKey == "" {
		return fmt.Errorf("lxd_container_port: set it or lxd_container_port_key, or no instance has a port")
	}
	if l.ContainerLabelValue != "" && l.ContainerLabelKey == "" {
		return fmt.Errorf("lxd_container_label_value: needs lxd_container_label_key")
	}
	return l.ValidateCommon()
}

// parseLXDAddress splits a server address into a unix socket path (empty for
// HTTPS) and the URL prefix requests use.
func parseLXDAddress(addr string) (socket, base string, err error) {
	u, err := url.Parse(addr)
	if err != nil {
		return "", "", err
	}
	switch u.Scheme {
	case "unix":
		if u.Host != "" || u.Opaque != "" || !filepath.IsAbs(u.Path) {
			return "", "", errors.New("want unix:///absolute/path/to/unix.socket")
		}
		return u.Path, "http://lxd", nil
	case "https":
		if u.Host == "" || (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.User != nil {
			return "", "", errors.New("want https://host[:port]")
		}
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "8443")
		}
		return "", "https://" + host, nil
	default:
		return "", "", errors.New("want unix:///path/to/unix.socket or https://host[:port]")
	}
}

// Fetch lists the running instances that pass the filter.
func (l *LXD) Fetch(ctx context.Context) ([]backend.Backend, error) {
	if l.conn == nil {
		return nil, errors.New("lxd: not provisioned")
	}
	client, base, err := l.connect(ctx)
	if err != nil {
		return nil, fmt.Errorf("lxd: %w", err)
	}
	var instances []lxdInstance
	if err := lxdCall(ctx, client, http.MethodGet, base+"/1.0/instances?recursion=2", nil, &instances); err != nil {
		l.disconnect(client)
		return nil, fmt.Errorf("lxd: listing instances: %w", err)
	}
	return l.backends(instances), nil
}

// Cleanup closes idle connections to the server.
func (l *LXD) Cleanup() error {
	if l.conn == nil {
		return nil
	}
	c := l.conn
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		c.client.CloseIdleConnections()
		c.client = nil
	}
	return nil
}

func (l *LXD) log() *zap.Logger {
	if l.logger != nil {
		return l.logger
	}
	return caddy.Log()
}

// lxdInstance is the part of an instance (GET /1.0/instances?recursion=2)
// that discovery reads.
type lxdInstance struct {
	Name           string            `json:"name"`
	Status         string            `json:"status"`
	Config         map[string]string `json:"config"`
	ExpandedConfig map[string]string `json:"expanded_config"`
	State          *struct {
		Network map[string]struct {
			Addresses []struct {
				Family  string `json:"family"`
				Address string `json:"address"`
				Scope   string `json:"scope"`
			} `json:"addresses"`
		} `json:"network"`
	} `json:"state"`
}

// backends turns the instance list into backends, sorted by instance name,
// and logs each instance it skips once per reason.
func (l *LXD) backends(instances []lxdInstance) []backend.Backend {
	sort.Slice(instances, func(i, j int) bool { return instances[i].Name < instances[j].Name })
	out := make([]backend.Backend, 0, len(instances))
	skipped := make(map[string]string)
	l.conn.mu.Lock()
	defer l.conn.mu.Unlock()
	for i := range instances {
		inst := &instances[i]
		b, reason := l.backend(inst)
		if reason != "" {
			skipped[inst.Name] = reason
			if l.conn.skipped[inst.Name] != reason {
				l.log().Warn("instance skipped", zap.String("instance", inst.Name), zap.String("reason", reason))
			}
			continue
		}
		if b != nil {
			out = append(out, *b)
		}
	}
	l.conn.skipped = skipped
	return out
}

// backend returns the instance's backend, nil for an instance that is not a
// candidate (not running, filtered out), or the reason why a candidate is
// unusable.
func (l *LXD) backend(inst *lxdInstance) (*backend.Backend, string) {
	if inst.Status != "Running" {
		return nil, ""
	}
	cfg := inst.ExpandedConfig
	if cfg == nil {
		cfg = inst.Config
	}
	if l.ContainerLabelKey != "" {
		v, ok := cfg[l.ContainerLabelKey]
		if !ok || (l.ContainerLabelValue != "" && v != l.ContainerLabelValue) {
			return nil, ""
		}
	}
	port := l.ContainerPort
	if l.ContainerPortKey != "" {
		if v, ok := cfg[l.ContainerPortKey]; ok {
			p, err := strconv.Atoi(strings.TrimSpace(v))
			if err != nil || p < 1 || p > 65535 {
				return nil, fmt.Sprintf("%s %q is not a port from 1 to 65535", l.ContainerPortKey, v)
			}
			port = p
		}
	}
	if port == 0 {
		return nil, fmt.Sprintf("no port: the instance has no %s and lxd_container_port is not set", l.ContainerPortKey)
	}
	iface := l.ContainerInterface
	if iface == "" {
		iface = "eth0"
	}
	if l.ContainerInterfaceKey != "" && cfg[l.ContainerInterfaceKey] != "" {
		iface = cfg[l.ContainerInterfaceKey]
	}
	family, kind := "inet", "IPv4"
	if l.ContainerAddressType == "IPv6" {
		family, kind = "inet6", "IPv6"
	}
	if inst.State == nil {
		return nil, "the server sent no instance state"
	}
	nic, ok := inst.State.Network[iface]
	if !ok {
		return nil, fmt.Sprintf("no network interface %q", iface)
	}
	host := ""
	for _, a := range nic.Addresses {
		if _, err := netip.ParseAddr(a.Address); err == nil && a.Family == family && a.Scope != "link" {
			host = a.Address
			break
		}
	}
	if host == "" {
		return nil, fmt.Sprintf("no %s address on %s (link-local addresses are not used)", kind, iface)
	}
	b := &backend.Backend{Host: host, Port: strconv.Itoa(port), Weight: 1, Priority: 1}
	if l.ContainerSNIKey != "" {
		b.SNI = cfg[l.ContainerSNIKey]
	}
	return b, ""
}

// connect returns the API client, building it on first use (and after a
// failure): for HTTPS that loads or creates the client certificate, pins or
// verifies the server's certificate and makes sure the server trusts the
// client.
func (l *LXD) connect(ctx context.Context) (*http.Client, string, error) {
	c := l.conn
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client != nil {
		return c.client, c.base, nil
	}
	addr := l.ServerAddress
	if addr == "" {
		addr = lxdDefaultAddress
	}
	socket, base, err := parseLXDAddress(addr)
	if err != nil {
		return nil, "", fmt.Errorf("lxd_server_address %q: %w", addr, err)
	}
	var client *http.Client
	if socket != "" {
		client = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var d net.Dialer
				return d.DialContext(ctx, "unix", socket)
			},
			MaxIdleConnsPerHost: 2,
		}}
	} else if client, err = l.connectHTTPS(ctx, base); err != nil {
		return nil, "", err
	}
	c.client, c.base = client, base
	return client, base, nil
}

// disconnect drops a client after a failed request so that the next fetch
// connects again (and for HTTPS re-reads the certificates and re-checks the
// server's trust).
func (l *LXD) disconnect(client *http.Client) {
	c := l.conn
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.client == client {
		client.CloseIdleConnections()
		c.client = nil
	}
}

func (l *LXD) connectHTTPS(ctx context.Context, base string) (*http.Client, error) {
	cert, err := l.clientCertificate()
	if err != nil {
		return nil, err
	}
	host := strings.TrimPrefix(base, "https://")
	serverName, _, _ := net.SplitHostPort(host)
	pinPath := filepath.Join(l.ConfigDirectory, "servercerts", l.remoteName()+".crt")
	pinned, err := readCertificate(pinPath)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("lxd_config_directory: server certificate: %w", err)
	}
	var client *http.Client
	if pinned != nil {
		client = lxdHTTPSClient(pinnedTLS(cert, pinned, pinPath))
	} else {
		// no pinned certificate: the server's must verify (PKI), or be
		// accepted on first use
		client = lxdHTTPSClient(&tls.Config{Certificates: []tls.Certificate{cert}, ServerName: serverName, MinVersion: tls.VersionTLS12})
		_, err := lxdServerInfo(ctx, client, base)
		var verr *tls.CertificateVerificationError
		switch {
		case err == nil:
		case !errors.As(err, &verr) || len(verr.UnverifiedCertificates) == 0:
			return nil, err
		case !l.AcceptServerCert:
			return nil, fmt.Errorf("the server's certificate is not trusted (%v): set lxd_accept_server_cert to pin it on first use, or save it as %s", verr.Err, pinPath)
		default:
			leaf := verr.UnverifiedCertificates[0]
			if err := writePEM(pinPath, "CERTIFICATE", leaf.Raw, 0o644); err != nil {
				return nil, fmt.Errorf("lxd_accept_server_cert: saving the server's certificate: %w", err)
			}
			l.log().Info("accepted and pinned the server's certificate",
				zap.String("server", base), zap.String("path", pinPath), zap.String("sha256", certFingerprint(leaf.Raw)))
			client = lxdHTTPSClient(pinnedTLS(cert, leaf, pinPath))
		}
	}
	info, err := lxdServerInfo(ctx, client, base)
	if err != nil {
		return nil, err
	}
	if info.Auth == "trusted" {
		return client, nil
	}
	certPath := filepath.Join(l.ConfigDirectory, "client.crt")
	if l.ServerRemotePassword == "" {
		return nil, fmt.Errorf("the server does not trust the client certificate %s: set lxd_server_remote_password (a trust password or token), or add it on the server with \"lxc config trust add\"", certPath)
	}
	body, _ := json.Marshal(map[string]string{"type": "client", "password": l.ServerRemotePassword})
	if err := lxdCall(ctx, client, http.MethodPost, base+"/1.0/certificates", body, nil); err != nil {
		return nil, fmt.Errorf("adding the client certificate %s with lxd_server_remote_password: %w", certPath, err)
	}
	if info, err = lxdServerInfo(ctx, client, base); err != nil {
		return nil, err
	}
	if info.Auth != "trusted" {
		return nil, fmt.Errorf("the server still does not trust the client certificate %s after adding it", certPath)
	}
	l.log().Info("the server now trusts the client certificate", zap.String("server", base), zap.String("certificate", certPath))
	return client, nil
}

func (l *LXD) remoteName() string {
	if l.ServerRemoteName == "" {
		return "local"
	}
	return l.ServerRemoteName
}

// lxdCertMu serialises the creation of client certificates, so that two
// servers sharing a config directory do not write mismatched halves.
var lxdCertMu sync.Mutex

// clientCertificate loads client.crt and client.key, creating them first
// when they are missing and lxd_generate_client_certs is set.
func (l *LXD) clientCertificate() (tls.Certificate, error) {
	lxdCertMu.Lock()
	defer lxdCertMu.Unlock()
	certPath := filepath.Join(l.ConfigDirectory, "client.crt")
	keyPath := filepath.Join(l.ConfigDirectory, "client.key")
	_, certErr := os.Stat(certPath)
	_, keyErr := os.Stat(keyPath)
	if errors.Is(certErr, fs.ErrNotExist) && errors.Is(keyErr, fs.ErrNotExist) {
		if !l.GenerateClientCerts {
			return tls.Certificate{}, fmt.Errorf("lxd_config_directory: no client certificate %s: set lxd_generate_client_certs to create one", certPath)
		}
		if err := generateClientCertificate(certPath, keyPath); err != nil {
			return tls.Certificate{}, fmt.Errorf("lxd_generate_client_certs: %w", err)
		}
		l.log().Info("created a client certificate", zap.String("path", certPath))
	}
	cert, err := tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("lxd_config_directory: client certificate: %w", err)
	}
	return cert, nil
}

// generateClientCertificate writes a new self-signed ECDSA P-384 client
// certificate and its key (what lxc creates too).
func generateClientCertificate(certPath, keyPath string) error {
	key, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		return err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 128))
	if err != nil {
		return err
	}
	name := "between"
	if h, err := os.Hostname(); err == nil {
		name += "@" + h
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: name, Organization: []string{"Between"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	if err := writePEM(keyPath, "EC PRIVATE KEY", keyDER, 0o600); err != nil {
		return err
	}
	return writePEM(certPath, "CERTIFICATE", der, 0o644)
}

// writePEM writes one PEM block to path, creating its directory (0700).
func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), mode)
}

// readCertificate reads the first certificate of a PEM file.
func readCertificate(path string) (*x509.Certificate, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return cert, nil
}

func certFingerprint(der []byte) string {
	return fmt.Sprintf("%x", sha256.Sum256(der))
}

// pinnedTLS accepts exactly the pinned certificate, whatever its names or
// dates (LXD's certificates are self-signed for the host, not a DNS name).
func pinnedTLS(cert tls.Certificate, pinned *x509.Certificate, pinPath string) *tls.Config {
	return &tls.Config{
		Certificates:       []tls.Certificate{cert},
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by the exact comparison below
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 || !bytes.Equal(raw[0], pinned.Raw) {
				got := "none"
				if len(raw) > 0 {
					got = certFingerprint(raw[0])
				}
				return fmt.Errorf("the server's certificate (sha256 %s) is not the one pinned in %s (sha256 %s)", got, pinPath, certFingerprint(pinned.Raw))
			}
			return nil
		},
	}
}

func lxdHTTPSClient(cfg *tls.Config) *http.Client {
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, MaxIdleConnsPerHost: 2}}
}

// lxdServer is the part of GET /1.0 that discovery reads.
type lxdServer struct {
	Auth string `json:"auth"` // "trusted" or "untrusted"
}

func lxdServerInfo(ctx context.Context, client *http.Client, base string) (*lxdServer, error) {
	var info lxdServer
	if err := lxdCall(ctx, client, http.MethodGet, base+"/1.0", nil, &info); err != nil {
		return nil, err
	}
	return &info, nil
}

// lxdError is an error answer of the LXD API.
type lxdError struct {
	Code    int
	Message string
}

func (e *lxdError) Error() string { return fmt.Sprintf("LXD error %d: %s", e.Code, e.Message) }

// lxdMaxResponse bounds the size of one API answer.
const lxdMaxResponse = 64 << 20

// lxdCall sends one request and decodes the metadata of a synchronous answer
// into out (when out is not nil).
func lxdCall(ctx context.Context, client *http.Client, method, url string, body []byte, out any) error {
	var rd io.Reader
	if body != nil {
		rd = bytes.NewReader(body)
	}
	req, err := http.NewRequestWithContext(ctx, method, url, rd)
	if err != nil {
		return err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, lxdMaxResponse+1))
	if err != nil {
		return fmt.Errorf("%s %s: reading the answer: %w", method, req.URL.Path, err)
	}
	if len(data) > lxdMaxResponse {
		return fmt.Errorf("%s %s: answer larger than %d bytes", method, req.URL.Path, lxdMaxResponse)
	}
	var envelope struct {
		Type      string          `json:"type"`
		ErrorCode int             `json:"error_code"`
		Error     string          `json:"error"`
		Metadata  json.RawMessage `json:"metadata"`
	}
	if err := json.Unmarshal(data, &envelope); err != nil {
		return fmt.Errorf("%s %s: HTTP %d: not an LXD answer: %w", method, req.URL.Path, resp.StatusCode, err)
	}
	if envelope.Type == "error" || resp.StatusCode >= 300 {
		code := envelope.ErrorCode
		if code == 0 {
			code = resp.StatusCode
		}
		msg := envelope.Error
		if msg == "" {
			msg = http.StatusText(resp.StatusCode)
		}
		return &lxdError{Code: code, Message: msg}
	}
	if envelope.Type != "sync" {
		return fmt.Errorf("%s %s: unexpected answer type %q", method, req.URL.Path, envelope.Type)
	}
	if out == nil {
		return nil
	}
	if err := json.Unmarshal(envelope.Metadata, out); err != nil {
		return fmt.Errorf("%s %s: unexpected metadata: %w", method, req.URL.Path, err)
	}
	return nil
}

// UnmarshalCaddyfile reads
//
//	discovery lxd [SERVER_ADDRESS] {
//		server_address          unix:///var/lib/lxd/unix.socket | https://HOST[:PORT]
//		remote_name             NAME
//		remote_password         PASSWORD_OR_TOKEN
//		config_directory        DIR
//		generate_client_certs   [true|false]
//		accept_server_cert      [true|false]
//		container_label_key     KEY
//		container_label_value   VALUE
//		container_port          PORT
//		container_port_key      KEY
//		container_interface     IFACE
//		container_interface_key KEY
//		container_sni_key       KEY
//		container_address_type  IPv4|IPv6
//		interval, timeout, failpolicy
//	}
//
// Each subdirective is the JSON field without its "lxd_" prefix; the full
// name is accepted too.
func (l *LXD) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		l.ServerAddress = d.Val()
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		name := strings.TrimPrefix(d.Val(), "lxd_")
		var str *string
		var flag *bool
		switch name {
		case "server_address":
			str = &l.ServerAddress
		case "server_remote_name", "remote_name":
			str = &l.ServerRemoteName
		case "server_remote_password", "remote_password":
			str = &l.ServerRemotePassword
		case "config_directory":
			str = &l.ConfigDirectory
		case "container_label_key":
			str = &l.ContainerLabelKey
		case "container_label_value":
			str = &l.ContainerLabelValue
		case "container_port_key":
			str = &l.ContainerPortKey
		case "container_interface":
			str = &l.ContainerInterface
		case "container_interface_key":
			str = &l.ContainerInterfaceKey
		case "container_sni_key":
			str = &l.ContainerSNIKey
		case "container_address_type":
			str = &l.ContainerAddressType
		case "generate_client_certs":
			flag = &l.GenerateClientCerts
		case "accept_server_cert":
			flag = &l.AcceptServerCert
		case "container_port":
			var v string
			if !d.Args(&v) || d.NextArg() {
				return d.ArgErr()
			}
			p, err := strconv.Atoi(v)
			if err != nil || p < 1 || p > 65535 {
				return d.Errf("container_port %q: must be a number from 1 to 65535", v)
			}
			l.ContainerPort = p
			continue
		default:
			if err := l.UnmarshalCommon(d); err != nil {
				return err
			}
			continue
		}
		if str != nil {
			if !d.Args(str) || d.NextArg() {
				return d.ArgErr()
			}
			continue
		}
		*flag = true
		if d.NextArg() {
			v, err := strconv.ParseBool(d.Val())
			if err != nil {
				return d.Errf("%s %q: want true or false", name, d.Val())
			}
			*flag = v
			if d.NextArg() {
				return d.ArgErr()
			}
		}
	}
	return nil
}

var (
	_ Configured            = (*LXD)(nil)
	_ caddy.Provisioner     = (*LXD)(nil)
	_ caddy.Validator       = (*LXD)(nil)
	_ caddy.CleanerUpper    = (*LXD)(nil)
	_ caddyfile.Unmarshaler = (*LXD)(nil)
)
