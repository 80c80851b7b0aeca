// Test helper (run with `java -cp '<kafka lib>/*' CreateAcls.java <bootstrap> <acl file>`): creates the ACL
// bindings listed one per line as "principal|resourceType|name|patternType|operation", the way Strimzi's
// User Operator turns a KafkaUser's spec.authorization.acls into Kafka ACLs.
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Properties;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class CreateAcls {
    // Strimzi spellings ("topic", "literal", "IdempotentWrite") to Java enum constants ("IDEMPOTENT_WRITE").
    static String constant(String name) {
        return name.replaceAll("([a-z])([A-Z])", "$1_$2").toUpperCase(java.util.Locale.ROOT);
    }

    public static void main(String[] args) throws Exception {
        List<AclBinding> bindings = new ArrayList<>();
        for (String line : Files.readAllLines(Path.of(args[1]))) {
            if (line.isBlank()) continue;
            String[] f = line.split("\\|");
            ResourcePattern pattern = new ResourcePattern(
                ResourceType.valueOf(constant(f[1])), f[2],
                // Strimzi's "prefix" is Kafka's PREFIXED pattern type.
                PatternType.valueOf(f[3].equals("prefix") ? "PREFIXED" : constant(f[3])));
            AccessControlEntry entry = new AccessControlEntry(
                f[0], "*", AclOperation.valueOf(constant(f[4])), AclPermissionType.ALLOW);
            bindings.add(new AclBinding(pattern, entry));
        }
        Properties props = new Properties();
        props.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[0]);
        try (Admin admin = Admin.create(props)) {
            admin.createAcls(bindings).all().get();
        }
        System.out.println("created " + bindings.size() + " ACL bindings");
    }
}
