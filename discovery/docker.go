package discovery

import (
	"cmp"
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/caddy-between/between/backend"
	"github.com/caddy-between/between/internal/clienttls"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"go.uber.org/zap"
)

func init() {
	caddy.RegisterModule(Docker{})
}

// Docker discovers backends among the running containers of a Docker Engine,
// through its REST API over the unix socket or over TCP (optionally with TLS).
//
// Each running container that matches docker_container_label becomes one
// backend for docker_container_private_port, the port the service listens on
// inside the container. Its address is found in one of two ways:
//
//   - Without docker_network (gobetween's way): the host port the private port
//     is published on. The host is the value of the container's environment
//     variable named by docker_container_host_env_var when it has one, else the
//     IP of the port mapping unless that is 0.0.0.0 or ::, else the host of
//     docker_endpoint (127.0.0.1, or ::1 for a mapping on ::, when the endpoint
//     is a unix socket). A container in the host network shares the host's
//     ports, so its private port is taken as published on all addresses.
//   - With docker_network: the container's IP address on that network and the
//     private port, so containers that publish nothing (Swarm, Compose) can be
//     reached. With docker_network "host", containers in the host network are
//     used, at the host address described above.
//
// A container without a usable address (the port is not published, the
// container is not on the network, it is paused) is skipped with a log line;
// it never becomes a backend with an empty host or port 0.
//
// The source follows the Engine's event stream: a container that starts,
// stops, dies, is paused or (with docker_network) is connected to or
// disconnected from a network makes it list the containers again at once, so
// changes show within a second. When the stream breaks (the daemon stops), the
// error is logged, the last good list stays (failpolicy keeplast) and the
// source retries after 1s, then after waits that double up to interval (30s
// when interval is 0).
type Docker struct {
	Common
	// The Engine API address: "unix:///path/to/docker.sock",
	// "tcp://host:port" or "http://host:port" (TLS with docker_tls_enabled),
	// or "https://host:port". Default "unix:///var/run/docker.sock". Without a
	// port, 2375 is used, or 2376 with TLS.
	DockerEndpoint string `json:"docker_endpoint,omitempty"`
	// The port the service listens on inside the container (required, 1-65535).
	DockerContainerPrivatePort int `json:"docker_container_private_port,omitempty"`
	// Only containers with this label are used: "key" (any value) or
	// "key=value". Default: every running container.
	DockerContainerLabel string `json:"docker_container_label,omitempty"`
	// The name of an environment variable of the container whose value is the
	// host to dial (the port is still the published one). When the container
	// does not set it, the mapping IP or the endpoint host is used.
	DockerContainerHostEnvVar string `json:"docker_container_host_env_var,omitempty"`
	// A Docker network, by name or ID. When set, each container is dialed at
	// its IP address on this network and the private port; published ports are
	// not used. "host" selects the containers in the host network, dialed at
	// the host address. Default: published ports.
	DockerNetwork string `json:"docker_network,omitempty"`
	// Speak TLS to the endpoint (a tcp:// or http:// endpoint; https:// always
	// does).
	DockerTLSEnabled bool `json:"docker_tls_enabled,omitempty"`
	// The client certificate (PEM) presented to the daemon; needs
	// docker_tls_key_path.
	DockerTLSCertPath string `json:"docker_tls_cert_path,omitempty"`
	// The client certificate's private key (PEM).
	DockerTLSKeyPath string `json:"docker_tls_key_path,omitempty"`
	// The CA certificate (PEM) that signed the daemon's certificate. Default:
	// the system's roots.
	DockerTLSCACertPath string `json:"docker_tls_cacert_path,omitempty"`

	client       *http.Client
	transport    *http.Transport
	baseURL      string // scheme://authority every request path is appended to
	endpointHost string // host of a TCP endpoint; "" for a unix socket
	logger       *zap.Logger

	skips *dockerSkips
}

// dockerSkips holds why each container was left out by the last fetch, so
// that a container is logged once, not after every event.
type dockerSkips struct {
	mu   sync.Mutex
	last map[string]string // container ID -> reason
}

// DefaultDockerEndpoint is the Engine API address used when docker_endpoint
// is not set.
const DefaultDockerEndpoint = "unix:///var/run/docker.sock"

// CaddyModule returns the Caddy module information.
func (Docker) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "between.discovery.docker",
		New: func() caddy.Module { return new(Docker) },
	}
}

// Provision sets the defaults and builds the API client (loading the TLS files).
func (s *Docker) Provision(ctx caddy.Context) error {
	s.logger = ctx.Logger()
	s.skips = new(dockerSkips)
	if s.DockerEndpoint == "" {
		s.DockerEndpoint = DefaultDockerEndpoint
	}
	ep, err := parseDockerEndpoint(s.DockerEndpoint, s.DockerTLSEnabled)
	if err != nil {
		return fmt.Errorf("docker_endpoint: %w", err)
	}
	s.baseURL, s.endpointHost = ep.baseURL, ep.host
	s.transport = &http.Transport{
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
	}
	if ep.socket != "" {
		socket := ep.socket
		s.transport.DialContext = func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		}
	} else {
		s.transport.DialContext = (&net.Dialer{KeepAlive: 30 * time.Second}).DialContext
	}
	if ep.tls {
		cfg, err := s.tlsConfig(ep.host)
		if err != nil {
			return err
		}
		s.transport.TLSClientConfig = cfg
	}
	// No client timeout: the event stream is long-lived. Every request runs
	// under a context with a deadline instead.
	s.client = &http.Client{Transport: s.transport}
	return nil
}

// tlsConfig loads the client certificate and the CA named by the TLS fields.
func (s *Docker) tlsConfig(serverName string) (*tls.Config, error) {
	return clienttls.Config("docker_tls_", serverName, s.DockerTLSCertPath, s.DockerTLSKeyPath, s.DockerTLSCACertPath)
}

// Validate checks the settings.
func (s *Docker) Validate() error {
	if s.DockerContainerPrivatePort < 1 || s.DockerContainerPrivatePort > 65535 {
		return fmt.Errorf("docker_container_private_port %d: required, a port from 1 to 65535", s.DockerContainerPrivatePort)
	}
	endpoint := s.DockerEndpoint
	if endpoint == "" {
		endpoint = DefaultDockerEndpoint
	}
	ep, err := parseDockerEndpoint(endpoint, s.DockerTLSEnabled)
	if err != nil {
		return fmt.Errorf("docker_endpoint: %w", err)
	}
	if (s.DockerTLSCertPath == "") != (s.DockerTLSKeyPath == "") {
		return fmt.Errorf("docker_tls_cert_path and docker_tls_key_path: set both or neither")
	}
	if !ep.tls && s.DockerTLSCertPath+s.DockerTLSKeyPath+s.DockerTLSCACertPath != "" {
		return fmt.Errorf("docker_tls_*_path: set, but docker_endpoint %q does not use TLS; set docker_tls_enabled or use https://", endpoint)
	}
	if s.DockerContainerLabel != "" && strings.HasPrefix(s.DockerContainerLabel, "=") {
		return fmt.Errorf("docker_container_label %q: want key or key=value", s.DockerContainerLabel)
	}
	if s.DockerContainerHostEnvVar != "" && s.DockerNetwork != "" && s.DockerNetwork != "host" {
		return fmt.Errorf("docker_container_host_env_var: not used with docker_network %q (the container's IP on that network is dialed); remove one", s.DockerNetwork)
	}
	return s.ValidateCommon()
}

// dockerEndpoint is a parsed docker_endpoint.
type dockerEndpoint struct {
	socket  string // unix socket path, or ""
	host    string // TCP host, or ""
	baseURL string
	tls     bool
}

// parseDockerEndpoint reads unix:///path, tcp://host[:port],
// http://host[:port] or https://host[:port].
func parseDockerEndpoint(endpoint string, tlsEnabled bool) (dockerEndpoint, error) {
	const want = "want unix:///path, tcp://host:port, http://host:port or https://host:port"
	u, err := url.Parse(endpoint)
	if err != nil {
		return dockerEndpoint{}, fmt.Errorf("%q: %v; %s", endpoint, err, want)
	}
	switch u.Scheme {
	case "unix":
		path := u.Path
		if u.Host != "" || path == "" {
			return dockerEndpoint{}, fmt.Errorf("%q: a unix endpoint is unix:///absolute/path", endpoint)
		}
		if tlsEnabled {
			return dockerEndpoint{}, fmt.Errorf("%q: docker_tls_enabled needs a tcp:// or https:// endpoint", endpoint)
		}
		// The host part of the URL is never dialed; it only names the daemon.
		return dockerEndpoint{socket: path, baseURL: "http://docker"}, nil
	case "tcp", "http", "https":
		if u.Path != "" && u.Path != "/" || u.RawQuery != "" || u.User != nil {
			return dockerEndpoint{}, fmt.Errorf("%q: only scheme://host:port is allowed", endpoint)
		}
		host, port := u.Hostname(), u.Port()
		if host == "" {
			return dockerEndpoint{}, fmt.Errorf("%q: no host; %s", endpoint, want)
		}
		useTLS := tlsEnabled || u.Scheme == "https"
		if port == "" {
			port = "2375"
			if useTLS {
				port = "2376"
			}
		}
		if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
			return dockerEndpoint{}, fmt.Errorf("%q: port %q must be a number from 1 to 65535", endpoint, port)
		}
		scheme := "http"
		if useTLS {
			scheme = "https"
		}
		return dockerEndpoint{host: host, tls: useTLS, baseURL: scheme + "://" + net.JoinHostPort(host, port)}, nil
	default:
		return dockerEndpoint{}, fmt.Errorf("%q: unknown scheme %q; %s", endpoint, u.Scheme, want)
	}
}

// The parts of the Engine API's answers that discovery reads.
type (
	dockerContainer struct {
		ID         string            `json:"Id"`
		Names      []string          `json:"Names"`
		Created    int64             `json:"Created"`
		State      string            `json:"State"`
		Labels     map[string]string `json:"Labels"`
		Ports      []dockerPort      `json:"Ports"`
		HostConfig struct {
			NetworkMode string `json:"NetworkMode"`
		} `json:"HostConfig"`
		NetworkSettings struct {
			Networks map[string]dockerAttachment `json:"Networks"`
		} `json:"NetworkSettings"`
	}
	dockerPort struct {
		IP          string `json:"IP"`
		PrivatePort int    `json:"PrivatePort"`
		PublicPort  int    `json:"PublicPort"`
		Type        string `json:"Type"`
	}
	dockerAttachment struct {
		NetworkID         string `json:"NetworkID"`
		IPAddress         string `json:"IPAddress"`
		GlobalIPv6Address string `json:"GlobalIPv6Address"`
	}
	dockerInspect struct {
		Config struct {
			Env []string `json:"Env"`
		} `json:"Config"`
	}
	dockerEvent struct {
		Type   string `json:"Type"`
		Action string `json:"Action"`
	}
)

func (c *dockerContainer) name() string {
	if len(c.Names) > 0 {
		return strings.TrimPrefix(c.Names[0], "/")
	}
	return dockerShortID(c.ID)
}

func (c *dockerContainer) inHostNetwork() bool {
	_, ok := c.NetworkSettings.Networks["host"]
	return c.HostConfig.NetworkMode == "host" || ok
}

func dockerShortID(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}

// errDockerNotFound is a 404 from the Engine API (a container that went away).
var errDockerNotFound = errors.New("not found")

// get sends GET path and decodes the JSON answer into v.
func (s *Docker) get(ctx context.Context, path string, v any) error {
	resp, err := s.do(ctx, path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	// A container list of many thousands fits; a runaway answer does not.
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(v); err != nil {
		return fmt.Errorf("GET %s on %s: decoding the answer: %w", strings.SplitN(path, "?", 2)[0], s.DockerEndpoint, err)
	}
	return nil
}

// do sends GET path and returns the response when its status is 200.
func (s *Docker) do(ctx context.Context, path string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.baseURL+path, nil)
	if err != nil {
		return nil, err
	}
	// errors name the path without its query (the filters)
	what := fmt.Sprintf("GET %s on %s", req.URL.Path, s.DockerEndpoint)
	resp, err := s.client.Do(req)
	if err != nil {
		var uerr *url.Error
		if errors.As(err, &uerr) {
			err = uerr.Err // it repeats the URL
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if resp.StatusCode == http.StatusOK {
		return resp, nil
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var apiErr struct {
		Message string `json:"message"`
	}
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &apiErr) == nil && apiErr.Message != "" {
		msg = apiErr.Message
	}
	err = fmt.Errorf("%s: %s: %s", what, resp.Status, msg)
	if resp.StatusCode == http.StatusNotFound {
		err = fmt.Errorf("%w: %w", errDockerNotFound, err)
	}
	return nil, err
}

// dockerFilterQuery renders an Engine API filters parameter.
func dockerFilterQuery(filters map[string][]string) string {
	b, _ := json.Marshal(filters)
	return url.QueryEscape(string(b))
}

// Fetch lists the running containers and returns one backend per container
// that has a usable address.
func (s *Docker) Fetch(ctx context.Context) ([]backend.Backend, error) {
	path := "/containers/json"
	if s.DockerContainerLabel != "" {
		path += "?filters=" + dockerFilterQuery(map[string][]string{"label": {s.DockerContainerLabel}})
	}
	var containers []dockerContainer
	if err := s.get(ctx, path, &containers); err != nil {
		return nil, fmt.Errorf("docker: listing containers: %w", err)
	}
	// Oldest first, so the list order (used by the "first" policy) is stable
	// and a new container comes last.
	slices.SortFunc(containers, func(a, b dockerContainer) int {
		return cmp.Or(cmp.Compare(a.Created, b.Created), strings.Compare(a.ID, b.ID))
	})
	out := make([]backend.Backend, 0, len(containers))
	seen := make(map[string]string, len(containers))
	skipped := make(map[string]string)
	for i := range containers {
		c := &containers[i]
		host, port, reason, err := s.address(ctx, c)
		if err != nil {
			return nil, fmt.Errorf("docker: container %s: %w", c.name(), err)
		}
		if reason != "" {
			s.skip(c, reason, skipped)
			continue
		}
		b := backend.Backend{Host: host, Port: strconv.Itoa(port), Weight: 1, Priority: 1}
		if other, dup := seen[b.Address()]; dup {
			s.skip(c, fmt.Sprintf("address %s is already used by container %s", b.Address(), other), skipped)
			continue
		}
		seen[b.Address()] = c.name()
		out = append(out, b)
	}
	s.rememberSkipped(skipped)
	return out, nil
}

// skip records that container c is left out and logs it, unless the
// previous fetch left it out for the same reason.
func (s *Docker) skip(c *dockerContainer, reason string, skipped map[string]string) {
	skipped[c.ID] = reason
	s.skips.mu.Lock()
	known := s.skips.last[c.ID] == reason
	s.skips.mu.Unlock()
	if known || s.logger == nil {
		return
	}
	s.logger.Warn("docker: container skipped",
		zap.String("container", c.name()),
		zap.String("id", dockerShortID(c.ID)),
		zap.String("reason", reason))
}

// rememberSkipped keeps the containers the fetch that just ended left out.
func (s *Docker) rememberSkipped(skipped map[string]string) {
	s.skips.mu.Lock()
	s.skips.last = skipped
	s.skips.mu.Unlock()
}

// address returns the host and port of container c, or why it has none
// (reason), or an error that fails the whole fetch.
func (s *Docker) address(ctx context.Context, c *dockerContainer) (host string, port int, reason string, err error) {
	private := s.DockerContainerPrivatePort
	if c.State != "" && c.State != "running" {
		return "", 0, "container is " + c.State, nil
	}
	if s.DockerNetwork != "" && s.DockerNetwork != "host" {
		att, ok := c.attachment(s.DockerNetwork)
		if !ok {
			return "", 0, fmt.Sprintf("not attached to network %q (docker_network)", s.DockerNetwork), nil
		}
		ip := att.IPAddress
		if ip == "" {
			ip = att.GlobalIPv6Address
		}
		if ip == "" {
			return "", 0, fmt.Sprintf("no IP address on network %q (docker_network)", s.DockerNetwork), nil
		}
		if net.ParseIP(ip) == nil {
			return "", 0, fmt.Sprintf("address %q on network %q (docker_network) is not an IP address", ip, s.DockerNetwork), nil
		}
		return ip, private, "", nil
	}

	var mapping *dockerPort
	if s.DockerNetwork == "" {
		mapping = c.publishedPort(private)
	}
	switch {
	case mapping != nil:
		port = mapping.PublicPort
	case c.inHostNetwork():
		// the container's ports are the host's own
		port = private
	case s.DockerNetwork == "host":
		return "", 0, `not in the host network (docker_network "host")`, nil
	default:
		return "", 0, fmt.Sprintf("does not publish private port %d (docker_container_private_port)", private), nil
	}

	if s.DockerContainerHostEnvVar != "" {
		env, err := s.env(ctx, c.ID, s.DockerContainerHostEnvVar)
		if errors.Is(err, errDockerNotFound) {
			return "", 0, "container went away", nil
		}
		if err != nil {
			return "", 0, "", err
		}
		if env != "" {
			if !dockerPlausibleHost(env) {
				return "", 0, fmt.Sprintf("environment variable %s=%q is not a host name or IP address (docker_container_host_env_var)", s.DockerContainerHostEnvVar, env), nil
			}
			return strings.Trim(env, "[]"), port, "", nil
		}
	}
	ip := ""
	if mapping != nil {
		ip = mapping.IP
	}
	return s.dockerHost(ip), port, "", nil
}

// dockerHost is the host to dial for a port published on ip: ip itself when
// it names one address, else the host of the endpoint (loopback for a local
// daemon behind a unix socket).
func (s *Docker) dockerHost(ip string) string {
	addr := net.ParseIP(ip)
	if addr != nil && !addr.IsUnspecified() {
		return addr.String()
	}
	if s.endpointHost != "" {
		return s.endpointHost
	}
	if addr != nil && addr.To4() == nil { // published on :: only
		return "::1"
	}
	return "127.0.0.1"
}

// attachment finds the container's endpoint on the network named network (or
// with that ID, or an ID that starts with those 12 or more characters).
func (c *dockerContainer) attachment(network string) (dockerAttachment, bool) {
	if att, ok := c.NetworkSettings.Networks[network]; ok {
		return att, true
	}
	for _, att := range c.NetworkSettings.Networks {
		if att.NetworkID == network || len(network) >= 12 && strings.HasPrefix(att.NetworkID, network) {
			return att, true
		}
	}
	return dockerAttachment{}, false
}

// publishedPort picks the mapping of the private port to use: one on a
// specific address first, then one on 0.0.0.0, then one on ::. A container is
// one backend even when its port is published several times (IPv4 and IPv6),
// so that it does not get a double share of the traffic.
func (c *dockerContainer) publishedPort(private int) *dockerPort {
	rank := func(p *dockerPort) int {
		ip := net.ParseIP(p.IP)
		switch {
		case ip == nil || !ip.IsUnspecified():
			return 0
		case ip.To4() != nil:
			return 1
		default:
			return 2
		}
	}
	var best *dockerPort
	for i := range c.Ports {
		p := &c.Ports[i]
		if p.PrivatePort != private || p.PublicPort < 1 || p.PublicPort > 65535 {
			continue // exposed but not published, or another port
		}
		if best == nil || rank(p) < rank(best) {
			best = p
		}
	}
	return best
}

// env returns the value of the container's environment variable name ("" if
// it is not set).
func (s *Docker) env(ctx context.Context, id, name string) (string, error) {
	var info dockerInspect
	if err := s.get(ctx, "/containers/"+url.PathEscape(id)+"/json", &info); err != nil {
		return "", err
	}
	for _, kv := range info.Config.Env {
		if k, v, ok := strings.Cut(kv, "="); ok && k == name {
			return v, nil
		}
	}
	return "", nil
}

// dockerPlausibleHost accepts an IP address (IPv6 with or without brackets) or a
// DNS name, and rejects what would make a broken host:port.
func dockerPlausibleHost(h string) bool {
	if net.ParseIP(strings.Trim(h, "[]")) != nil {
		return true
	}
	return h != "" && !strings.ContainsAny(h, ":/ \t[]@?#")
}

// dockerWatchedActions are the events after which the container list may differ.
var dockerWatchedActions = map[string][]string{
	"container": {"start", "restart", "die", "stop", "pause", "unpause", "destroy"},
	"network":   {"connect", "disconnect"},
}

// Watch follows the Engine's event stream and sends a new list after every
// event that can change it. It returns when the stream breaks (an error) or ctx
// ends.
func (s *Docker) Watch(ctx context.Context, update func([]backend.Backend)) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	types := []string{"container"}
	var actions []string
	actions = append(actions, dockerWatchedActions["container"]...)
	if s.DockerNetwork != "" && s.DockerNetwork != "host" {
		types = append(types, "network")
		actions = append(actions, dockerWatchedActions["network"]...)
	}
	path := "/events?filters=" + dockerFilterQuery(map[string][]string{"type": types, "event": actions})

	// Until the daemon answers, the fetch timeout bounds the request; the
	// stream itself lasts until it breaks.
	timeout := time.AfterFunc(s.FetchTimeout(), cancel)
	resp, err := s.do(ctx, path)
	if !timeout.Stop() {
		if err == nil {
			resp.Body.Close()
		}
		return fmt.Errorf("docker: following events: no answer from %s within %s", s.DockerEndpoint, s.FetchTimeout())
	}
	if err != nil {
		return fmt.Errorf("docker: following events: %w", err)
	}

	changed := make(chan struct{}, 1)
	networkChanged := make(chan struct{}, 1)
	streamErr := make(chan error, 1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		streamErr <- readDockerEvents(resp.Body, changed, networkChanged)
	}()
	defer func() {
		cancel()
		resp.Body.Close() // ends the reader
		wg.Wait()
	}()

	// Events from before the stream opened are covered by a fresh list.
	refetch := func() error {
		fctx, fcancel := context.WithTimeout(ctx, s.FetchTimeout())
		defer fcancel()
		list, err := s.Fetch(fctx)
		if err != nil {
			return err
		}
		update(list)
		return nil
	}
	if err := refetch(); err != nil {
		return err
	}
	// The Engine announces a network connect before the container's record
	// shows the new address (measured: up to ~200ms), so a network event is
	// followed by lists a little later too.
	settle := time.NewTimer(time.Hour)
	settle.Stop()
	defer settle.Stop()
	var pending []time.Duration
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-networkChanged:
			if err := refetch(); err != nil {
				return err
			}
			pending = slices.Clone(dockerSettleDelays)
			settle.Reset(pending[0])
		case <-settle.C:
			if err := refetch(); err != nil {
				return err
			}
			if pending = pending[1:]; len(pending) > 0 {
				settle.Reset(pending[0])
			}
		case err := <-streamErr:
			if err == nil || errors.Is(err, io.ErrUnexpectedEOF) {
				err = io.EOF
			}
			return fmt.Errorf("docker: event stream from %s ended: %w", s.DockerEndpoint, err)
		case <-changed:
			// One list for a burst of events: those that came during the
			// fetch leave one more signal behind.
			if err := refetch(); err != nil {
				return err
			}
		}
	}
}

// dockerSettleDelays are the waits, one after the other, between a network
// event and the lists that catch the container's late update: at 100ms,
// 250ms and 1s.
var dockerSettleDelays = []time.Duration{100 * time.Millisecond, 150 * time.Millisecond, 750 * time.Millisecond}

// readDockerEvents decodes the event stream until it ends, signalling changed
// (or, for a network event, networkChanged) without blocking after each
// relevant event.
func readDockerEvents(r io.Reader, changed, networkChanged chan<- struct{}) error {
	dec := json.NewDecoder(r)
	for {
		var ev dockerEvent
		if err := dec.Decode(&ev); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		// The server filters already; checking again keeps a daemon that
		// ignores a filter from causing a list per unrelated event.
		if !slices.Contains(dockerWatchedActions[ev.Type], ev.Action) {
			continue
		}
		signal := changed
		if ev.Type == "network" {
			signal = networkChanged
		}
		select {
		case signal <- struct{}{}:
		default:
		}
	}
}

// Cleanup closes the idle connections to the daemon.
func (s *Docker) Cleanup() error {
	if s.transport != nil {
		s.transport.CloseIdleConnections()
	}
	return nil
}

// UnmarshalCaddyfile reads
//
//	discovery docker {
//		endpoint               unix:///var/run/docker.sock | tcp://HOST:PORT | https://HOST:PORT
//		container_private_port PORT
//		container_label        KEY[=VALUE]
//		container_host_env_var NAME
//		network                NAME|ID|host
//		tls_enabled            [true|false]
//		tls_cert_path          PATH
//		tls_key_path           PATH
//		tls_cacert_path        PATH
//		interval, timeout, failpolicy
//	}
//
// Each field is the JSON field without its "docker_" prefix (the full name
// works too).
func (s *Docker) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // kind
	if d.NextArg() {
		return d.ArgErr()
	}
	strField := func(dst *string) error {
		if !d.Args(dst) || d.NextArg() {
			return d.ArgErr()
		}
		return nil
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		switch field := strings.TrimPrefix(d.Val(), "docker_"); field {
		case "endpoint":
			if err := strField(&s.DockerEndpoint); err != nil {
				return err
			}
		case "container_private_port":
			var v string
			if err := strField(&v); err != nil {
				return err
			}
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 65535 {
				return d.Errf("container_private_port %q: want a port from 1 to 65535", v)
			}
			s.DockerContainerPrivatePort = n
		case "container_label":
			if err := strField(&s.DockerContainerLabel); err != nil {
				return err
			}
		case "container_host_env_var":
			if err := strField(&s.DockerContainerHostEnvVar); err != nil {
				return err
			}
		case "network":
			if err := strField(&s.DockerNetwork); err != nil {
				return err
			}
		case "tls_enabled":
			s.DockerTLSEnabled = true
			if d.NextArg() {
				v, err := strconv.ParseBool(d.Val())
				if err != nil {
					return d.Errf("tls_enabled %q: want true or false", d.Val())
				}
				s.DockerTLSEnabled = v
				if d.NextArg() {
					return d.ArgErr()
				}
			}
		case "tls_cert_path":
			if err := strField(&s.DockerTLSCertPath); err != nil {
				return err
			}
		case "tls_key_path":
			if err := strField(&s.DockerTLSKeyPath); err != nil {
				return err
			}
		case "tls_cacert_path":
			if err := strField(&s.DockerTLSCACertPath); err != nil {
				return err
			}
		default:
			if err := s.UnmarshalCommon(d); err != nil {
				return err
			}
		}
	}
	if s.DockerContainerPrivatePort == 0 {
		return d.Err("discovery docker: container_private_port is required")
	}
	return nil
}

var (
	_ Configured            = (*Docker)(nil)
	_ Watcher               = (*Docker)(nil)
	_ caddy.Provisioner     = (*Docker)(nil)
	_ caddy.Validator       = (*Docker)(nil)
	_ caddy.CleanerUpper    = (*Docker)(nil)
	_ caddyfile.Unmarshaler = (*Docker)(nil)
)
