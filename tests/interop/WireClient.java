// A client of the zkpubsub wire format written from docs/wire-format.md
// alone, in another language, with ZooKeeper's own Java client and nothing
// of zkpubsub's: the tests run it beside the Python client to show that the
// document is enough to publish to and consume from a bus.
//
//   java -cp <ZooKeeper's class path> WireClient.java publish <hosts> <root> <topic> <client id> <count>
//   java -cp <ZooKeeper's class path> WireClient.java subscribe <hosts> <root> <topic> <client id> <count> <seconds> [inline]
//   java -cp <ZooKeeper's class path> WireClient.java put <hosts> <root> <queue> <client id> <count>
//   java -cp <ZooKeeper's class path> WireClient.java work <hosts> <root> <queue> <client id> <count> <seconds>
//
// publish sends <count> messages (JSON payloads {"n": i, "lang": "java"},
// every fourth one padded past 512 bytes), one transaction each, and prints
// "published <message id> <subscribers> <how each queue got it>" per
// message. subscribe registers, subscribes (its queue record asks for
// envelopes in names with "inline"), prints "ready", then one line per
// message it reads, deletes what it read and unsubscribes after <count>
// messages; it exits 3 if they do not come within <seconds>.
// put puts <count> work items (JSON payloads {"n": i}, priority 5, 1, 3, 5,
// 1, 3, ... in turn), one transaction each, and prints "put <message id>
// <priority>". work registers a worker, then reserves and acks <count>
// items one at a time, answering an item that asks for a result with
// {"done": true, "bytes": <its payload's length>}, and prints "acked <message id> <attempt> <result
// or -> <payload, base64>" per item; it exits 3 if they do not come within
// <seconds>.
//
// It leaves out what a small client may leave out: it does not move a
// queue to a fresh segment (it refuses to publish into a full one), writes
// no overflow markers and does not take part in the cleaner's election; its
// work queue puts into the current segment without ever rolling on (a
// fuller client rolls after 10,000 creates), does not bound puts, and
// neither leases, releases nor buries items.

import java.io.ByteArrayOutputStream;
import java.net.InetAddress;
import java.net.URLEncoder;
import java.nio.charset.StandardCharsets;
import java.security.SecureRandom;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CountDownLatch;
import java.util.concurrent.Semaphore;
import java.util.concurrent.TimeUnit;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.apache.zookeeper.CreateMode;
import org.apache.zookeeper.KeeperException;
import org.apache.zookeeper.Op;
import org.apache.zookeeper.Watcher;
import org.apache.zookeeper.ZooDefs;
import org.apache.zookeeper.ZooKeeper;
import org.apache.zookeeper.data.Stat;

public class WireClient {
    static final SecureRandom RANDOM = new SecureRandom();
    static final Pattern ENTRY = Pattern.compile("^([mo])([0-9a-f]{12})-(\\d{10}|-\\d{9,10})$");
    static final Pattern INLINE =
            Pattern.compile("^m([0-9a-f]{12})\\.([A-Za-z0-9_-]*)\\.(\\d{10}|-\\d{9,10})$");
    static final Pattern SEGMENT = Pattern.compile("^s(\\d{10})$");
    static final int SEGMENT_ENTRIES = 10_000, INLINE_SEGMENT_ENTRIES = 512, INLINE_MAX = 512;

    final ZooKeeper zk;
    final String root, id;
    final Semaphore changed = new Semaphore(0);

    WireClient(String hosts, String root, String id) throws Exception {
        CountDownLatch up = new CountDownLatch(1);
        this.zk = new ZooKeeper(hosts, 10_000, event -> {
            if (event.getState() == Watcher.Event.KeeperState.SyncConnected) up.countDown();
        });
        if (!up.await(15, TimeUnit.SECONDS)) throw new IllegalStateException("no connection to " + hosts);
        this.root = root;
        this.id = id;
    }

    public static void main(String[] args) throws Exception {
        boolean publish = args.length == 6 && args[0].equals("publish");
        boolean subscribe = args.length >= 7 && args.length <= 8 && args[0].equals("subscribe");
        boolean put = args.length == 6 && args[0].equals("put");
        boolean work = args.length == 7 && args[0].equals("work");
        if (!publish && !subscribe && !put && !work) {
            System.err.println("usage: WireClient publish <hosts> <root> <topic> <client id> <count>\n"
                    + "       WireClient subscribe <hosts> <root> <topic> <client id> <count> <seconds> [inline]\n"
                    + "       WireClient put <hosts> <root> <queue> <client id> <count>\n"
                    + "       WireClient work <hosts> <root> <queue> <client id> <count> <seconds>");
            System.exit(2);
        }
        WireClient client = new WireClient(args[1], args[2], args[4]);
        int status;
        try {
            client.register();
            if (publish) {
                status = client.publish(args[3], Integer.parseInt(args[5]));
            } else if (put) {
                status = client.put(args[3], Integer.parseInt(args[5]));
            } else if (work) {
                status = client.work(args[3], Integer.parseInt(args[5]), Long.parseLong(args[6]));
            } else {
                boolean inline = args.length > 7 && args[7].equals("inline");
                status = client.subscribe(args[3], Integer.parseInt(args[5]), Long.parseLong(args[6]), inline);
            }
        } finally {
            client.zk.close();
        }
        System.out.flush();
        System.exit(status);
    }

    // -- registering: "Subscribing", step 1 --------------------------------------

    void register() throws Exception {
        String host = InetAddress.getLocalHost().getHostName();
        long pid = ProcessHandle.current().pid();
        String started = String.valueOf(System.currentTimeMillis() / 1000.0);
        String doc = "{\"host\":\"" + host + "\",\"pid\":" + pid + ",\"started\":" + started
                + ",\"version\":\"wire-client\"}";  // no boot or pidns: never proof of death
        ensure(root + "/clients");
        zk.create(root + "/clients/" + id, utf8(doc), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.EPHEMERAL);
    }

    // -- publishing: "Publishing" --------------------------------------------------

    int publish(String topic, int count) throws Exception {
        String topicPath = root + "/subscribers/" + topic;
        ensure(root + "/receipts/" + id);
        for (int n = 0; n < count; n++) {
            String padding = n % 4 == 3 ? ",\"pad\":\"" + "x".repeat(600) + "\"" : "";
            byte[] payload = utf8("{\"n\":" + n + ",\"lang\":\"java\"" + padding + "}");
            String messageId = hex(16);
            byte[] envelope = envelope(messageId, topic, payload);
            for (int attempt = 0; ; attempt++) {
                if (attempt == 20) throw new IllegalStateException("no publish after 20 attempts");
                Stat topicStat = new Stat();
                List<String> subscribers = listSubscribers(topicPath, topicStat);
                String guid = hex(6);
                String receipt = root + "/receipts/" + id + "/r" + guid;
                List<Op> ops = new ArrayList<>();
                ops.add(Op.create(receipt, utf8(id), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT));
                ops.add(Op.check(topicPath, topicStat.getVersion()));
                List<String> forms = new ArrayList<>();
                for (String subscriber : subscribers) {
                    forms.add(addQueue(ops, root + "/messages/" + subscriber + "/" + topic, guid, envelope));
                }
                if (commit(ops, receipt)) {
                    System.out.println("published " + messageId + " " + subscribers.size() + " " + String.join(",", forms));
                    zk.delete(receipt, -1);
                    break;
                }
            }
        }
        return 0;
    }

    List<String> listSubscribers(String topicPath, Stat stat) throws Exception {
        for (int look = 0; look < 2; look++) {
            try {
                List<String> names = zk.getChildren(topicPath, false, stat);
                if (!names.isEmpty()) return names;
            } catch (KeeperException.NoNodeException e) {
                // missing: sync and read again, as for no children
            }
            CountDownLatch synced = new CountDownLatch(1);
            zk.sync(topicPath, (rc, path, ctx) -> synced.countDown(), null);
            synced.await(10, TimeUnit.SECONDS);
        }
        throw new IllegalStateException("no subscribers to " + topicPath);
    }

    /** The operations for one subscriber's queue; how it gets the message. */
    String addQueue(List<Op> ops, String queue, String guid, byte[] envelope) throws Exception {
        Stat stat = new Stat();
        String record = new String(zk.getData(queue, false, stat), StandardCharsets.UTF_8);
        if (record.isEmpty()) throw new IllegalStateException(queue + ": a version 1 queue; not handled here");
        if (Pattern.compile("\"full\"\\s*:\\s*true").matcher(record).find()) {
            ops.add(Op.check(queue, stat.getVersion()));  // evicted: nothing else
            return "evicted";
        }
        String segment = queue + "/" + String.format("s%010d", jsonInt(record, "segment", 0));
        int inline = jsonInt(record, "inline", -1);
        Stat segmentStat = zk.exists(segment, false);
        int limit = Math.min(jsonInt(record, "max_nodes", Integer.MAX_VALUE),
                inline >= 0 ? INLINE_SEGMENT_ENTRIES : SEGMENT_ENTRIES);
        if (segmentStat == null || segmentStat.getNumChildren() >= limit) {
            throw new IllegalStateException(segment + " is full or gone; a fuller client moves the queue on");
        }
        ops.add(Op.check(queue, stat.getVersion()));
        if (envelope.length <= Math.min(inline, INLINE_MAX)) {
            String text = Base64.getUrlEncoder().withoutPadding().encodeToString(envelope);
            ops.add(Op.create(segment + "/m" + guid + "." + text + ".", new byte[0],
                    ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT_SEQUENTIAL));
            return "name";
        }
        ops.add(Op.create(segment + "/m" + guid + "-", envelope,
                ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT_SEQUENTIAL));
        return "data";
    }

    /** Commits ``ops``: true if they took effect, false to read again and retry. */
    boolean commit(List<Op> ops, String receipt) throws Exception {
        try {
            zk.multi(ops);
            return true;
        } catch (KeeperException.ConnectionLossException lost) {
            for (int look = 0; look < 50; look++) {  // never retry without looking
                try {
                    return zk.exists(receipt, false) != null;
                } catch (KeeperException.ConnectionLossException again) {
                    Thread.sleep(200);
                }
            }
            throw lost;
        } catch (KeeperException failed) {
            return false;  // a check failed, or a queue is gone: read again
        }
    }

    // -- work queues: "Work queues" -----------------------------------------------------

    static final Pattern ITEM = Pattern.compile("^[qr](\\d{3})-(?:s(\\d{10})-)?[0-9a-f]{12}-(\\d{10}|-\\d{9,10})$");

    int put(String name, int count) throws Exception {
        String queue = root + "/queues/" + name;
        for (String folder : List.of("items", "reserved", "dead", "results", "workers")) {
            ensure(queue + "/" + folder);
        }
        ensure(root + "/receipts/" + id);
        for (int n = 0; n < count; n++) {
            int priority = new int[] {5, 1, 3}[n % 3];
            String messageId = hex(16);
            byte[] envelope = envelope(messageId, name, utf8("{\"n\":" + n + "}"));
            for (int attempt = 0; ; attempt++) {
                if (attempt == 20) throw new IllegalStateException("no put after 20 attempts");
                Stat stat = new Stat();
                String current = new String(zk.getData(queue, false, stat), StandardCharsets.UTF_8);
                if (current.isEmpty()) {  // no segment yet: roll on to the first
                    roll(queue, 0, stat.getVersion());
                    continue;
                }
                int segment = Integer.parseInt(current.trim());
                String guid = hex(6);
                String receipt = root + "/receipts/" + id + "/r" + guid;
                String segmentName = String.format("s%010d", segment);
                String prefix = queue + "/items/" + segmentName + "/q" + String.format("%03d", priority)
                        + "-" + segmentName + "-" + guid + "-";
                List<Op> ops = List.of(
                        Op.create(receipt, utf8(id), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT),
                        Op.check(queue, stat.getVersion()),
                        Op.create(prefix, envelope, ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT_SEQUENTIAL));
                if (commit(ops, receipt)) {
                    System.out.println("put " + messageId + " " + priority);
                    zk.delete(receipt, -1);
                    break;
                }
            }
        }
        return 0;
    }

    /** Rolls the queue on from segment ``from`` (its node read at ``version``). */
    void roll(String queue, int from, int version) throws Exception {
        try {
            zk.multi(List.of(
                    Op.setData(queue, utf8(String.valueOf(from + 1)), version),
                    Op.create(queue + "/items/" + String.format("s%010d", from + 1), new byte[0],
                            ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT)));
        } catch (KeeperException.BadVersionException | KeeperException.NodeExistsException raced) {
            // another producer rolled first
        }
    }

    int work(String name, int count, long seconds) throws Exception {
        String queue = root + "/queues/" + name;
        String worker = id + ".w1";
        String me = queue + "/workers/" + worker;
        zk.multi(List.of(
                Op.create(me, new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.EPHEMERAL),
                Op.setData(me, new byte[0], -1)));
        ensure(root + "/receipts/" + id);
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        for (int done = 0; done < count; ) {
            List<String[]> items = listItems(queue);  // {path, name}, in order
            boolean took = false;
            for (String[] item : items) {
                if (reserveAndAck(queue, item[0], item[1], worker)) {
                    took = true;
                    done++;
                    break;
                }
            }
            if (!took) {
                long left = deadline - System.nanoTime();
                if (left <= 0) return 3;
                changed.tryAcquire(Math.min(left, TimeUnit.MILLISECONDS.toNanos(500)), TimeUnit.NANOSECONDS);
                changed.drainPermits();
            }
        }
        zk.delete(me, -1);
        return 0;
    }

    /** The available items (not reserved), ordered by priority, segment, sequence. */
    List<String[]> listItems(String queue) throws Exception {
        Watcher wake = event -> changed.release();
        List<String> reserved = zk.getChildren(queue + "/reserved", false);
        List<String[]> items = new ArrayList<>();
        for (String child : zk.getChildren(queue + "/items", wake)) {
            if (SEGMENT.matcher(child).matches()) {
                for (String name : zk.getChildren(queue + "/items/" + child, wake)) {
                    items.add(new String[] {queue + "/items/" + child + "/" + name, name});
                }
            } else {
                items.add(new String[] {queue + "/items/" + child, child});  // the unsegmented layout
            }
        }
        items.removeIf(item -> !ITEM.matcher(item[1]).matches() || reserved.contains(item[1]));
        items.sort((a, b) -> {
            Matcher x = ITEM.matcher(a[1]), y = ITEM.matcher(b[1]);
            x.matches();
            y.matches();
            int order = Integer.compare(Integer.parseInt(x.group(1)), Integer.parseInt(y.group(1)));
            if (order == 0) order = Long.compare(segmentOf(x), segmentOf(y));
            if (order == 0) order = Long.compare(Long.parseLong(x.group(3)) & 0xffffffffL,
                    Long.parseLong(y.group(3)) & 0xffffffffL);
            return order;
        });
        return items;
    }

    static long segmentOf(Matcher item) {
        return item.group(2) == null ? 0 : Long.parseLong(item.group(2));
    }

    boolean reserveAndAck(String queue, String path, String name, String worker) throws Exception {
        Stat stat = new Stat();
        byte[] data;
        try {
            data = zk.getData(path, false, stat);
        } catch (KeeperException.NoNodeException gone) {
            return false;
        }
        int version = stat.getVersion();
        Map<String, Object> record = new LinkedHashMap<>();
        record.put("worker", worker);
        record.put("at", System.currentTimeMillis() / 1000.0);
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Msgpack.write(out, record);
        String reservation = queue + "/reserved/" + name;
        try {
            zk.multi(List.of(
                    Op.create(reservation, out.toByteArray(), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.EPHEMERAL),
                    Op.setData(path, data, version)));
        } catch (KeeperException.NodeExistsException | KeeperException.BadVersionException
                | KeeperException.NoNodeException taken) {
            return false;  // another worker was first
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> message = (Map<String, Object>) ((List<?>) ((Map<?, ?>) Msgpack.read(
                new Msgpack.Reader(data))).get("msgs")).get(0);
        byte[] payload = (byte[]) message.get("p");
        String messageId = (String) message.get("id");
        String guid = hex(6);
        String receipt = root + "/receipts/" + id + "/r" + guid;
        List<Op> ops = new ArrayList<>();
        ops.add(Op.create(receipt, utf8(id), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT));
        ops.add(Op.delete(reservation, -1));
        ops.add(Op.delete(path, version + 1));
        String answer = "-";
        if (name.startsWith("r")) {
            String text = "{\"done\":true,\"bytes\":" + payload.length + "}";
            Map<String, Object> result = new LinkedHashMap<>();
            result.put("v", 1L);
            result.put("status", "ok");
            result.put("ct", "application/json");
            result.put("r", utf8(text));
            result.put("reason", "");
            result.put("at", System.currentTimeMillis() / 1000.0);
            ByteArrayOutputStream doc = new ByteArrayOutputStream();
            Msgpack.write(doc, result);
            ops.add(Op.create(queue + "/results/" + messageId, doc.toByteArray(),
                    ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT));
            answer = text;
        }
        if (!commit(ops, receipt)) throw new IllegalStateException("the reservation of " + name + " was lost");
        zk.delete(receipt, -1);
        System.out.println(String.join(" ", "acked", messageId, String.valueOf(version + 1),
                Base64.getEncoder().encodeToString(utf8(answer)),
                Base64.getEncoder().encodeToString(payload)));
        System.out.flush();
        return true;
    }

    byte[] envelope(String messageId, String topic, byte[] payload) {
        Map<String, Object> message = new LinkedHashMap<>();
        message.put("id", messageId);
        message.put("pub", id);
        message.put("ts", System.currentTimeMillis() / 1000.0);
        message.put("topic", topic);
        message.put("h", Map.of("lang", "java"));
        message.put("ct", "application/json");
        message.put("p", payload);
        Map<String, Object> envelope = new LinkedHashMap<>();
        envelope.put("v", 1L);
        envelope.put("msgs", List.of(message));
        ByteArrayOutputStream out = new ByteArrayOutputStream();
        Msgpack.write(out, envelope);
        return out.toByteArray();
    }

    // -- subscribing: "Subscribing", steps 2-4 -----------------------------------------

    int subscribe(String topic, int count, long seconds, boolean inline) throws Exception {
        String queue = root + "/messages/" + id + "/" + topic;
        String record = "{\"v\":2,\"segment\":0,\"max_nodes\":10000,\"max_bytes\":10000000,\"when_full\":\"drop\""
                + (inline ? ",\"inline\":" + INLINE_MAX : "") + "}";
        String topicPath = root + "/subscribers/" + topic;
        ensure(root + "/messages/" + id);
        ensure(topicPath);
        zk.multi(List.of(
                Op.create(queue, utf8(record), ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT),
                Op.create(queue + "/s0000000000", new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT),
                Op.setData(topicPath, new byte[0], -1)));
        zk.multi(List.of(
                Op.create(topicPath + "/" + id, new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.EPHEMERAL),
                Op.setData(topicPath, new byte[0], -1)));
        System.out.println("ready");
        System.out.flush();
        long deadline = System.nanoTime() + TimeUnit.SECONDS.toNanos(seconds);
        int read = 0;
        while (read < count) {
            int before = read;
            read += readQueue(queue, count - read);
            if (read == before) {
                long left = deadline - System.nanoTime();
                if (left <= 0) return 3;
                changed.tryAcquire(Math.min(left, TimeUnit.MILLISECONDS.toNanos(500)), TimeUnit.NANOSECONDS);
                changed.drainPermits();
            }
        }
        zk.multi(List.of(Op.delete(topicPath + "/" + id, -1), Op.setData(topicPath, new byte[0], -1)));
        return 0;
    }

    /** Reads what the queue holds now, in order, up to ``wanted`` messages. */
    int readQueue(String queue, int wanted) throws Exception {
        Watcher wake = event -> changed.release();
        List<String> segments = new ArrayList<>();
        for (String name : zk.getChildren(queue, wake)) {
            if (SEGMENT.matcher(name).matches()) segments.add(name);
        }
        segments.sort(null);  // %010d: the string order is the number order
        int read = 0;
        for (String segment : segments) {
            List<String> entries = zk.getChildren(queue + "/" + segment, wake);
            entries.sort((a, b) -> Long.compare(sequence(a), sequence(b)));
            for (String entry : entries) {
                if (read >= wanted) return read;
                read += handle(queue + "/" + segment + "/" + entry, entry);
            }
        }
        return read;
    }

    /** The sequence number of an entry (taken modulo 2^32; foreign names last). */
    static long sequence(String name) {
        for (Pattern pattern : List.of(ENTRY, INLINE)) {
            Matcher m = pattern.matcher(name);
            if (m.matches()) return Long.parseLong(m.group(3)) & 0xffffffffL;
        }
        return Long.MAX_VALUE;
    }

    int handle(String path, String name) throws Exception {
        Matcher inline = INLINE.matcher(name);
        Matcher entry = ENTRY.matcher(name);
        byte[] data;
        String via;
        if (inline.matches()) {
            data = Base64.getUrlDecoder().decode(inline.group(2));
            via = "name";
        } else if (entry.matches() && entry.group(1).equals("m")) {
            data = zk.getData(path, false, null);
            via = "data";
        } else if (entry.matches()) {
            Stat stat = new Stat();
            String marker = new String(zk.getData(path, false, stat), StandardCharsets.UTF_8);
            zk.delete(path, stat.getVersion());
            System.out.println("gap " + marker);
            return 0;
        } else {
            System.out.println("foreign " + name);
            zk.delete(path, -1);
            return 0;
        }
        @SuppressWarnings("unchecked")
        Map<String, Object> envelope = (Map<String, Object>) Msgpack.read(new Msgpack.Reader(data));
        if (!Long.valueOf(1).equals(envelope.get("v"))) throw new IllegalStateException("envelope version " + envelope.get("v"));
        int messages = 0;
        for (Object item : (List<?>) envelope.get("msgs")) {
            @SuppressWarnings("unchecked")
            Map<String, Object> message = (Map<String, Object>) item;
            StringBuilder headers = new StringBuilder();
            for (Map.Entry<?, ?> h : ((Map<?, ?>) message.get("h")).entrySet()) {
                if (headers.length() > 0) headers.append('&');
                headers.append(URLEncoder.encode((String) h.getKey(), StandardCharsets.UTF_8)).append('=')
                        .append(URLEncoder.encode((String) h.getValue(), StandardCharsets.UTF_8));
            }
            System.out.println(String.join(" ", "message", via, (String) message.get("id"),
                    (String) message.get("topic"), (String) message.get("pub"), (String) message.get("ct"),
                    String.valueOf(message.get("ts")), headers.length() == 0 ? "-" : headers.toString(),
                    Base64.getEncoder().encodeToString((byte[]) message.get("p"))));
            messages++;
        }
        zk.delete(path, -1);  // every message in it handled
        return messages;
    }

    // -- helpers ---------------------------------------------------------------------

    void ensure(String path) throws Exception {
        StringBuilder at = new StringBuilder();
        for (String part : path.substring(1).split("/")) {
            at.append('/').append(part);
            try {
                zk.create(at.toString(), new byte[0], ZooDefs.Ids.OPEN_ACL_UNSAFE, CreateMode.PERSISTENT);
            } catch (KeeperException.NodeExistsException e) {
                // there already
            }
        }
    }

    static int jsonInt(String doc, String field, int missing) {
        Matcher m = Pattern.compile("\"" + field + "\"\\s*:\\s*(-?\\d+)").matcher(doc);
        return m.find() ? Integer.parseInt(m.group(1)) : missing;
    }

    static String hex(int bytes) {
        byte[] raw = new byte[bytes];
        RANDOM.nextBytes(raw);
        StringBuilder out = new StringBuilder();
        for (byte b : raw) out.append(String.format("%02x", b));
        return out.toString();
    }

    static byte[] utf8(String text) {
        return text.getBytes(StandardCharsets.UTF_8);
    }

    /** The part of msgpack an envelope uses. */
    static final class Msgpack {
        static void write(ByteArrayOutputStream out, Object value) {
            if (value instanceof Map<?, ?> map) {
                header(out, map.size(), 0x80, 0xde);
                for (Map.Entry<?, ?> e : map.entrySet()) {
                    write(out, e.getKey());
                    write(out, e.getValue());
                }
            } else if (value instanceof List<?> list) {
                header(out, list.size(), 0x90, 0xdc);
                for (Object item : list) write(out, item);
            } else if (value instanceof String text) {
                byte[] raw = utf8(text);
                if (raw.length < 32) out.write(0xa0 | raw.length);
                else { out.write(0xdb); int32(out, raw.length); }
                out.writeBytes(raw);
            } else if (value instanceof byte[] raw) {
                out.write(0xc6);
                int32(out, raw.length);
                out.writeBytes(raw);
            } else if (value instanceof Double d) {
                out.write(0xcb);
                long bits = Double.doubleToLongBits(d);
                int32(out, (int) (bits >>> 32));
                int32(out, (int) bits);
            } else if (value instanceof Long n && n >= 0 && n < 128) {
                out.write(n.intValue());
            } else {
                throw new IllegalArgumentException("not in an envelope: " + value);
            }
        }

        static void header(ByteArrayOutputStream out, int size, int fix, int wide) {
            if (size < 16) out.write(fix | size);
            else { out.write(wide + 1); int32(out, size); }  // map32 / array32
        }

        static void int32(ByteArrayOutputStream out, int n) {
            out.write(n >>> 24); out.write(n >>> 16); out.write(n >>> 8); out.write(n);
        }

        static final class Reader {
            final byte[] data;
            int at;
            Reader(byte[] data) { this.data = data; }
            int u8() { return data[at++] & 0xff; }
            long unsigned(int bytes) {
                long n = 0;
                for (int i = 0; i < bytes; i++) n = (n << 8) | u8();
                return n;
            }
            byte[] take(long n) {
                byte[] out = java.util.Arrays.copyOfRange(data, at, at + (int) n);
                at += (int) n;
                return out;
            }
        }

        static Object read(Reader r) {
            int b = r.u8();
            if (b <= 0x7f) return (long) b;
            if (b >= 0xe0) return (long) (byte) b;
            if ((b & 0xf0) == 0x80) return map(r, b & 0x0f);
            if ((b & 0xf0) == 0x90) return list(r, b & 0x0f);
            if ((b & 0xe0) == 0xa0) return new String(r.take(b & 0x1f), StandardCharsets.UTF_8);
            switch (b) {
                case 0xc0: return null;
                case 0xc2: return false;
                case 0xc3: return true;
                case 0xc4: case 0xc5: case 0xc6: return r.take(r.unsigned(1 << (b - 0xc4)));
                case 0xca: return (double) Float.intBitsToFloat((int) r.unsigned(4));
                case 0xcb: return Double.longBitsToDouble(r.unsigned(8));
                case 0xcc: case 0xcd: case 0xce: case 0xcf: return r.unsigned(1 << (b - 0xcc));
                case 0xd0: return (long) (byte) r.unsigned(1);
                case 0xd1: return (long) (short) r.unsigned(2);
                case 0xd2: return (long) (int) r.unsigned(4);
                case 0xd3: return r.unsigned(8);
                case 0xd9: case 0xda: case 0xdb:
                    return new String(r.take(r.unsigned(1 << (b - 0xd9))), StandardCharsets.UTF_8);
                case 0xdc: return list(r, (int) r.unsigned(2));
                case 0xdd: return list(r, (int) r.unsigned(4));
                case 0xde: return map(r, (int) r.unsigned(2));
                case 0xdf: return map(r, (int) r.unsigned(4));
                default: throw new IllegalArgumentException("msgpack type 0x" + Integer.toHexString(b));
            }
        }

        static Map<Object, Object> map(Reader r, int size) {
            Map<Object, Object> map = new LinkedHashMap<>();
            for (int i = 0; i < size; i++) map.put(read(r), read(r));
            return map;
        }

        static List<Object> list(Reader r, int size) {
            List<Object> list = new ArrayList<>();
            for (int i = 0; i < size; i++) list.add(read(r));
            return list;
        }
    }
}
