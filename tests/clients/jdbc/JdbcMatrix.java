// PgJDBC scenarios for tests/integration/test_clients_jdbc.py, run once per test module with
// `java -cp postgresql.jar JdbcMatrix.java TARGET=URL ...` (source launch: no build step).
//
// Each target (direct, proxy) runs every scenario on one connection and prints one line
// per scenario: `TARGET<TAB>SCENARIO<TAB>RESULT`, RESULT being a JSON-ish list of rows that
// the test compares between targets.  Nothing printed depends on the target.
import java.sql.BatchUpdateException;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import org.postgresql.PGConnection;
import org.postgresql.PGStatement;
import org.postgresql.jdbc.AutoSave;

public class JdbcMatrix {
    static String quote(String s) {
        return s == null ? "null" : "\"" + s.replace("\\", "\\\\").replace("\"", "\\\"") + "\"";
    }

    static String row(ResultSet rs) throws SQLException {
        int n = rs.getMetaData().getColumnCount();
        StringBuilder sb = new StringBuilder("[");
        for (int i = 1; i <= n; i++) {
            if (i > 1) sb.append(",");
            sb.append(quote(rs.getString(i)));
        }
        return sb.append("]").toString();
    }

    static void print(String target, String scenario, List<String> rows) {
        System.out.println(target + "\t" + scenario + "\t[" + String.join(",", rows) + "]");
    }

    // setFetchSize inside a transaction: named portals, Execute with a row limit, PortalSuspended.
    // Two cursors read interleaved (two portals suspended at once), a third closed early.
    static void fetchSize(Connection conn, String target) throws SQLException {
        conn.setAutoCommit(false);
        List<String> out = new ArrayList<>();
        try (PreparedStatement a = conn.prepareStatement(
                     "select g, md5(g::text) as h from generate_series(1, ?) g order by g /* jdbc fetch a */");
             PreparedStatement b = conn.prepareStatement(
                     "select g * 2 as twice from generate_series(1, ?) g /* jdbc fetch b */")) {
            a.setFetchSize(10);
            a.setInt(1, 95);
            b.setFetchSize(7);
            b.setInt(1, 30);
            try (ResultSet ra = a.executeQuery(); ResultSet rb = b.executeQuery()) {
                boolean moreA = true, moreB = true;
                while (moreA || moreB) {
                    if (moreA && (moreA = ra.next())) out.add(row(ra));
                    if (moreB && (moreB = rb.next())) out.add(row(rb));
                }
            }
        }
        try (PreparedStatement c = conn.prepareStatement(
                "select g from generate_series(1, ?) g /* jdbc fetch early close */")) {
            c.setFetchSize(10);
            c.setInt(1, 100);
            try (ResultSet rc = c.executeQuery()) {
                for (int i = 0; i < 15 && rc.next(); i++) out.add(row(rc));
            }
        }
        conn.commit();
        conn.setAutoCommit(true);
        print(target, "fetch_size", out);
    }

    // prepareThreshold=3 (URL): the 3rd execution on switches to a named server statement.
    static void prepareThreshold(Connection conn, String target) throws SQLException {
        List<String> out = new ArrayList<>();
        try (PreparedStatement ps = conn.prepareStatement(
                "select ?::int * 3 + 1 as v, 'item ' || ? as s /* jdbc threshold */")) {
            for (int i = 1; i <= 8; i++) {
                ps.setInt(1, i);
                ps.setString(2, "n" + i);
                try (ResultSet rs = ps.executeQuery()) {
                    while (rs.next()) out.add(row(rs));
                }
                out.add(ps.unwrap(PGStatement.class).isUseServerPrepare() ? "\"server\"" : "\"unnamed\"");
            }
        }
        try (Statement st = conn.createStatement()) {
            st.execute("create temp table jdbc_items (id int primary key, label text)");
        }
        try (PreparedStatement ins = conn.prepareStatement(
                "insert into jdbc_items (id, label) values (?, ?)")) {
            for (int i = 1; i <= 20; i++) {
                ins.setInt(1, i);
                ins.setString(2, "label " + i);
                ins.addBatch();
            }
            int total = 0;
            for (int n : ins.executeBatch()) total += n;
            out.add("\"batch " + total + "\"");
        }
        try (PreparedStatement sum = conn.prepareStatement(
                "select count(*), sum(id), string_agg(label, ',' order by id) from jdbc_items where id > ?")) {
            for (int i = 0; i < 4; i++) {
                sum.setInt(1, i * 5);
                try (ResultSet rs = sum.executeQuery()) {
                    while (rs.next()) out.add(row(rs));
                }
            }
        }
        print(target, "prepare_threshold", out);
    }

    // A portal left suspended when its transaction commits; a batch that fails part-way
    // (its Executes pipelined before one Sync); autosave's savepoints around a failure.
    static void failures(Connection conn, String target) throws SQLException {
        List<String> out = new ArrayList<>();
        conn.setAutoCommit(false);
        PreparedStatement open = conn.prepareStatement(
                "select g, g % 3 as m from generate_series(1, ?) g /* jdbc left open */");
        open.setFetchSize(10);
        open.setInt(1, 100);
        ResultSet ro = open.executeQuery();
        for (int i = 0; i < 12 && ro.next(); i++) out.add(row(ro));
        conn.commit();  // not closed: the portal ends with the transaction
        try (Statement st = conn.createStatement()) {
            st.execute("create temp table jdbc_unique (id int primary key)");
        }
        conn.commit();
        try (PreparedStatement ins = conn.prepareStatement("insert into jdbc_unique (id) values (?)")) {
            for (int id : new int[] {1, 2, 2, 3}) {
                ins.setInt(1, id);
                ins.addBatch();
            }
            try {
                ins.executeBatch();
                out.add("\"no error\"");
            } catch (BatchUpdateException e) {
                out.add(quote(e.getSQLState() + " " + Arrays.toString(e.getUpdateCounts())));
            }
        }
        conn.rollback();
        conn.unwrap(PGConnection.class).setAutosave(AutoSave.ALWAYS);
        try (PreparedStatement div = conn.prepareStatement("select 100 / ? as q /* jdbc autosave */")) {
            for (int d : new int[] {5, 0, 4}) {
                div.setInt(1, d);
                try (ResultSet rs = div.executeQuery()) {
                    while (rs.next()) out.add(row(rs));
                } catch (SQLException e) {
                    out.add(quote(e.getSQLState()));
                }
            }
        }
        conn.commit();
        conn.unwrap(PGConnection.class).setAutosave(AutoSave.NEVER);
        conn.setAutoCommit(true);
        print(target, "failures", out);
    }

    // A connection closed with a portal suspended in an open transaction (on a connection
    // of its own: what it printed is compared, the statement must still be counted).
    static void abandoned(String url, String target) throws SQLException {
        List<String> out = new ArrayList<>();
        try (Connection conn = DriverManager.getConnection(url)) {
            conn.setAutoCommit(false);
            PreparedStatement ps = conn.prepareStatement(
                    "select g, -g as neg from generate_series(1, ?) g /* jdbc abandoned */");
            ps.setFetchSize(10);
            ps.setInt(1, 100);
            ResultSet rs = ps.executeQuery();
            for (int i = 0; i < 3 && rs.next(); i++) out.add(row(rs));
        }  // Connection.close() sends Terminate; the server drops the portal and rolls back
        print(target, "abandoned", out);
    }

    public static void main(String[] args) throws Exception {
        for (String arg : args) {
            int eq = arg.indexOf('=');
            String target = arg.substring(0, eq), url = arg.substring(eq + 1);
            try (Connection conn = DriverManager.getConnection(url)) {
                fetchSize(conn, target);
                prepareThreshold(conn, target);
                failures(conn, target);
            }
            abandoned(url, target);
        }
    }
}
